// Option parsing (command line over file over defaults), validation messages, and the mode scheduler.
#include <gtest/gtest.h>

#include <fstream>

#include "test_util.hpp"
#include "vae/config.hpp"
#include "vae/errors.hpp"
#include "vae/scheduler.hpp"

namespace vae {
namespace {

ParsedArgs parse(std::vector<std::string> args) {
  args.insert(args.begin(), "vae_dist");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  return parse_args(int(argv.size()), argv.data());
}

std::string error_of(std::vector<std::string> args) {
  try {
    parse(std::move(args));
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

TEST(ConfigTest, DefaultsAreV3) {
  const Config c = parse({}).config;
  EXPECT_EQ(c.arch.hidden, (std::vector<int>{640, 320}));
  EXPECT_EQ(c.arch.latent, 128);
  EXPECT_EQ(c.batch, 64);
  EXPECT_DOUBLE_EQ(c.lr, 8e-4);
  EXPECT_EQ(c.arch.act, Activation::elu);
  EXPECT_EQ(c.digits.size(), 10u);
}

TEST(ConfigTest, PresetsMatchTheReport) {
  Config v1 = parse({"--preset", "v1"}).config;
  EXPECT_EQ(v1.arch.hidden, (std::vector<int>{1024, 512}));
  EXPECT_EQ(v1.arch.latent, 128);
  EXPECT_EQ(v1.batch, 16);
  EXPECT_DOUBLE_EQ(v1.lr, 5e-5);
  Config v2 = parse({"--preset", "v2"}).config;
  EXPECT_EQ(v2.arch.hidden, (std::vector<int>{512, 256}));
  EXPECT_EQ(v2.arch.latent, 64);
  EXPECT_EQ(v2.batch, 64);
  EXPECT_DOUBLE_EQ(v2.lr, 1e-3);
}

TEST(ConfigTest, ConvPresetIsTheIssuesModel) {
  const Config c = parse({"--preset", "conv"}).config;
  EXPECT_EQ(c.arch.conv_channels, (std::vector<int>{32, 64}));
  EXPECT_EQ(c.arch.hidden, (std::vector<int>{512}));
  EXPECT_EQ(c.arch.latent, 32);
  EXPECT_EQ(c.batch, 64);
  EXPECT_EQ(c.arch.features(), 64u * 7 * 7);
  EXPECT_TRUE(parse({"--preset", "conv", "--conv-channels", "none"}).config.arch.conv_channels.empty());
  EXPECT_EQ(parse({"--conv-channels", "8"}).config.arch.conv_channels, (std::vector<int>{8}));
  // the effective configuration keeps the convolutions through a round trip
  test::TempDir dir;
  std::ofstream(dir / "eff.ini") << c.to_ini();
  EXPECT_EQ(parse({"--config", (dir / "eff.ini").string()}).config.arch.conv_channels, c.arch.conv_channels);
}

TEST(ConfigTest, CommandLineBeatsFileBeatsPresetAndDefaults) {
  test::TempDir dir;
  std::ofstream(dir / "run.ini") << "# a comment\npreset = v2\nlatent = 32\nbatch = 128\nepochs = 3\n[fast]\nbeta-start = 0.1\n";
  const Config c = parse({"--config", (dir / "run.ini").string(), "--batch", "32", "--hidden", "100,50"}).config;
  EXPECT_EQ(c.preset, "v2");
  EXPECT_EQ(c.arch.hidden, (std::vector<int>{100, 50}));  // command line
  EXPECT_EQ(c.arch.latent, 32);                           // file over preset
  EXPECT_EQ(c.batch, 32);                                 // command line over file
  EXPECT_EQ(c.epochs, 3);                                 // file over default
  EXPECT_DOUBLE_EQ(c.lr, 1e-3);                           // preset
  EXPECT_DOUBLE_EQ(c.modes[0].beta_start, 0.1);           // section key
  EXPECT_EQ(c.seed, 42u);                                 // default
}

TEST(ConfigTest, EffectiveIniRoundTrips) {
  const Config a = parse({"--preset", "v2", "--digits", "3,5", "--epochs", "7", "--balanced.lr-factor", "0.5", "--weight-decay", "0.01", "--dropout", "0.2", "--iw-train", "5", "--shift", "0.25", "--shift-pixels", "2"}).config;
  test::TempDir dir;
  std::ofstream(dir / "eff.ini") << a.to_ini();
  const Config b = parse({"--config", (dir / "eff.ini").string()}).config;
  EXPECT_EQ(b.to_ini(), a.to_ini());
  EXPECT_EQ(b.digits, (std::vector<int>{3, 5}));
  EXPECT_DOUBLE_EQ(b.weight_decay, 0.01);
  EXPECT_DOUBLE_EQ(b.dropout, 0.2);
  EXPECT_EQ(b.iw_train, 5);
  EXPECT_DOUBLE_EQ(b.shift, 0.25);
  EXPECT_EQ(b.shift_pixels, 2);
}

TEST(ConfigTest, HelpListsEveryOptionWithDefaults) {
  const ParsedArgs p = parse({"--help"});
  ASSERT_TRUE(p.help);
  for (const char* opt : {"--batch", "--lr", "--epochs", "--digits", "--fast.beta-start", "--quality.lr-factor", "--plateau.patience",
                          "--threads", "--kernels", "--run-dir"})
    EXPECT_NE(p.help_text.find(opt), std::string::npos) << opt;
  EXPECT_NE(p.help_text.find("(=10)"), std::string::npos);
}

TEST(ConfigErrors, OneLineMessages) {
  EXPECT_EQ(error_of({"--bogus"}), "unrecognised option '--bogus'");
  EXPECT_EQ(error_of({"--batch", "0"}), "option --batch: must be positive, got 0");
  EXPECT_EQ(error_of({"--lr", "0"}), "option --lr: must be in (0, 1], got 0.000000");
  EXPECT_EQ(error_of({"--lr", "-1e-3"}), "option --lr: must be in (0, 1], got -0.001000");
  EXPECT_EQ(error_of({"--weight-decay", "-0.1"}), "option --weight-decay: must be in [0, 1/lr), got -0.100000");
  EXPECT_EQ(error_of({"--lr", "0.5", "--weight-decay", "2"}), "option --weight-decay: must be in [0, 1/lr), got 2.000000");
  EXPECT_EQ(error_of({"--epochs", "-1"}), "option --epochs: must not be negative, got -1");
  EXPECT_EQ(error_of({"--dropout", "1"}), "option --dropout: must be in [0, 1), got 1.000000");
  EXPECT_EQ(error_of({"--dropout", "-0.1"}), "option --dropout: must be in [0, 1), got -0.100000");
  EXPECT_EQ(error_of({"--iw-train", "0"}), "option --iw-train: must be in 1-64, got 0");
  EXPECT_EQ(error_of({"--iw-train", "65"}), "option --iw-train: must be in 1-64, got 65");
  EXPECT_EQ(error_of({"--shift", "1.5"}), "option --shift: must be in [0, 1], got 1.500000");
  EXPECT_EQ(error_of({"--shift-pixels", "0"}), "option --shift-pixels: must be in 1-27, got 0");
  EXPECT_EQ(error_of({"--preset", "v9"}), "option --preset: unknown preset 'v9' (expected v1, v2, v3, burda or conv)");
  EXPECT_EQ(error_of({"--digits", ""}), "option --digits: the list is empty");
  EXPECT_EQ(error_of({"--conv-channels", "8,16,32"}),
            "option --conv-channels: takes at most 2 convolutions (a third would halve the 7-pixel side), got 3");
  EXPECT_EQ(error_of({"--conv-channels", "0"}), "option --conv-channels: channel count 0 is outside 1-4096");
  EXPECT_EQ(error_of({"--digits", "1,11"}), "option --digits: digit 11 is outside 0-9");
  EXPECT_EQ(error_of({"--hidden", "640,x"}), "option --hidden: '640,x' is not a comma-separated list of integers");
  EXPECT_EQ(error_of({"--activation", "gelu"}), "option --activation: unknown activation 'gelu' (expected elu, relu, leaky_relu or tanh)");
  EXPECT_EQ(error_of({"--batch", "many"}), "the argument ('many') for option '--batch' is invalid");
  EXPECT_EQ(error_of({"--plateau.patience", "3"}), "option --plateau.patience: plateau switching needs a validation set (--val-size N)");
  EXPECT_EQ(error_of({"--fast.until", "9", "--balanced.until", "4"}), "option --balanced.until: must not be before fast.until");
}

TEST(ConfigErrors, FileErrorsNameTheFile) {
  test::TempDir dir;
  std::ofstream(dir / "bad.ini") << "batchsize = 12\n";
  EXPECT_EQ(error_of({"--config", (dir / "bad.ini").string()}), (dir / "bad.ini").string() + ": unrecognised option 'batchsize'");
  std::ofstream(dir / "bad2.ini") << "epochs = ten\n";
  EXPECT_EQ(error_of({"--config", (dir / "bad2.ini").string()}),
            (dir / "bad2.ini").string() + ": the argument ('ten') for option 'epochs' is invalid");
  EXPECT_EQ(error_of({"--config", (dir / "none.ini").string()}), (dir / "none.ini").string() + ": no such file (the config file)");
}

TEST(Printable, EscapesWhatIsNotTextAndCutsLongValues) {
  EXPECT_EQ(printable("plain text"), "plain text");
  EXPECT_EQ(printable("\x1b[31m\n\x7f"), "\\x1b[31m\\x0a\\x7f");
  EXPECT_EQ(printable("β ≥ 1 \xf0\x9f\x98\x80"), "β ≥ 1 \xf0\x9f\x98\x80") << "valid UTF-8 is shown as it is";
  // A stray continuation byte, a truncated sequence, an overlong '/', a UTF-16 surrogate.
  EXPECT_EQ(printable("\x80 \xe2\x89 \xc0\xaf \xed\xa0\x80"), "\\x80 \\xe2\\x89 \\xc0\\xaf \\xed\\xa0\\x80");
  EXPECT_EQ(printable(std::string(100, 'a'), 10), "aaaaaaaaaa... (100 bytes)");
  EXPECT_EQ(printable("\x01\x02\x03", 9), "\\x01\\x02... (3 bytes)") << "an escape is never cut in half";
  EXPECT_EQ(in_quotes("x\ty"), "'x\\x09y'");
}

TEST(ConfigErrors, ValuesInMessagesAreEscaped) {
  EXPECT_EQ(error_of({"--preset", "v3\x1b[2J"}), "option --preset: unknown preset 'v3\\x1b[2J' (expected v1, v2, v3, burda or conv)");
  const std::string long_value(500, 'x');
  EXPECT_EQ(error_of({"--wire", long_value.c_str()}),
            "option --wire: unknown value '" + std::string(80, 'x') + "... (500 bytes)' (expected fp32 or bf16)");
}

TEST(ConfigErrors, PlaceholderInAValueEndsInAMessage) {
  // Boost would put '%value%' in for '%value%' for ever (found by fuzz_config).
  EXPECT_EQ(error_of({"--lr", "1e-%value%3"}), "the argument for option '--lr' is invalid");
  EXPECT_EQ(error_of({"--%canonical_option%"}), "unrecognised option '--%canonical_option%'");
  test::TempDir dir;
  std::ofstream(dir / "p.ini") << "lr = %value%\n";
  EXPECT_EQ(error_of({"--config", (dir / "p.ini").string()}), (dir / "p.ini").string() + ": the argument for option 'lr' is invalid");
}

TEST(ConfigErrors, ConfigDirectoryIsAnError) {
  test::TempDir dir;
  EXPECT_EQ(error_of({"--config", dir.path().string()}), dir.path().string() + ": is a directory, not a config file");
}

TEST(SchedulerTest, ModesByEpochWithLinearBetaRamp) {
  std::array<ModeSpec, 3> modes{{{3, 0.2, 1.0, 2, 1.0}, {5, 1.0, 1.0, 0, 0.5}, {0, 1.0, 2.0, 4, 0.1}}};
  ModeScheduler s(modes, {});
  const EpochPlan e0 = s.plan(0), e1 = s.plan(1), e2 = s.plan(2), e3 = s.plan(3), e5 = s.plan(5), e7 = s.plan(7), e20 = s.plan(20);
  EXPECT_EQ(e0.mode, Mode::fast);
  EXPECT_DOUBLE_EQ(e0.beta, 0.2);
  EXPECT_DOUBLE_EQ(e1.beta, 0.6);
  EXPECT_DOUBLE_EQ(e2.beta, 1.0);
  EXPECT_EQ(e3.mode, Mode::balanced);
  EXPECT_DOUBLE_EQ(e3.lr_factor, 0.5);
  EXPECT_EQ(e5.mode, Mode::quality);
  EXPECT_DOUBLE_EQ(e5.beta, 1.0);
  EXPECT_DOUBLE_EQ(e7.beta, 1.5);
  EXPECT_DOUBLE_EQ(e20.beta, 2.0);
  EXPECT_DOUBLE_EQ(e20.lr_factor, 0.1);
}

TEST(SchedulerTest, PlateauMovesToTheNextModeEarly) {
  std::array<ModeSpec, 3> modes{{{100, 1, 1, 0, 1}, {200, 1, 1, 0, 1}, {0, 1, 1, 0, 1}}};
  ModeScheduler s(modes, {2, 0.01});
  EXPECT_EQ(s.plan(0).mode, Mode::fast);
  s.observe(100.0);
  EXPECT_EQ(s.plan(1).mode, Mode::fast);
  s.observe(99.5);  // better, but by less than 1 %
  EXPECT_EQ(s.plan(2).mode, Mode::fast);
  s.observe(99.4);  // second stale epoch: switch
  EXPECT_EQ(s.plan(3).mode, Mode::balanced);
  EXPECT_EQ(s.state().mode_start, 3);
  s.observe(90.0);
  EXPECT_EQ(s.plan(4).mode, Mode::balanced);
}

}  // namespace
}  // namespace vae
