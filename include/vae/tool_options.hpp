// The tools' command lines: Boost.Program_options parsing with every error turned into one UsageError line.
#pragma once

#include <boost/program_options.hpp>

#include <cstdio>
#include <exception>
#include <initializer_list>
#include <iostream>
#include <optional>
#include <string>

#include "vae/config.hpp"
#include "vae/errors.hpp"

namespace vae {

inline boost::program_options::variables_map parse_tool_options(const boost::program_options::options_description& desc, int argc,
                                                                char** argv) {
  boost::program_options::variables_map vm;
  try {
    boost::program_options::store(boost::program_options::parse_command_line(argc, argv, desc), vm);
  } catch (const boost::program_options::error& e) {
    throw UsageError(option_error(e, argc, argv));
  }
  return vm;
}

// The same for a one-process tool: --help prints desc and gives nothing to do; each of `required` must be given.
inline std::optional<boost::program_options::variables_map> parse_tool_request(const boost::program_options::options_description& desc,
                                                                              int argc, char** argv,
                                                                              std::initializer_list<const char*> required) {
  boost::program_options::variables_map vm = parse_tool_options(desc, argc, argv);
  if (vm.count("help")) {
    std::cout << desc;
    return std::nullopt;
  }
  for (const char* name : required)
    if (!vm.count(name)) throw UsageError(std::string("option --") + name + " is required");
  return vm;
}

// A one-process tool's main: body() returns the exit code; an exception becomes one line "NAME: error: …" and exit 2 for a
// bad input, 1 for anything else.
template <class Body>
int run_tool(const char* name, Body&& body) {
  try {
    return body();
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s: error: %s\n", name, e.what());
    return kExitUsage;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", name, e.what());
    return kExitFailure;
  }
}

}  // namespace vae
