// The program's version and the git commit it was built from (generated at build time, so never stale).
#pragma once

namespace vae {

const char* version();
const char* git_commit();  // short hash, "+changes" when built from a modified tree, "unknown" outside git

}  // namespace vae
