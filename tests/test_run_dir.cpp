// The run directory survives faults: one run at a time (flock), last.ckpt -> prev.ckpt with a
// fallback on resume, stale temporary files removed, a step-0 checkpoint, metrics lines that a
// resume reproduces, and write errors (a real file-size limit, EFBIG) that name the file and
// leave the previous files whole. The kill -9 and full-disk runs of the command line are in
// tests/fault_test.sh.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <lotgrad/lotgrad.h>
#include <lotgrad/models/metrics_log.h>
#include <sstream>

using namespace lotgrad;
namespace fs = std::filesystem;

namespace {
models::TrainConfig tiny(const std::string& out) {
  models::TrainConfig c;
  c.task = "listops";
  c.min_len = 3;
  c.max_len = 12;
  c.gen_train = 300;
  c.gen_val = 50;
  c.gen_test = 50;
  c.attention = "softmax";
  c.d_model = 16;
  c.mlp = 32;
  c.heads = 2;
  c.depth = 1;
  c.batch = 8;
  c.steps = 8;
  c.eval_every = 4;
  c.checkpoint_every = 4;
  c.out_dir = out;
  c.quiet = true;
  c.threads = 1;
  c.seed = 5;
  return c;
}
doctest::Contains contains(const std::string& s) { return doctest::Contains(s.c_str()); }
std::string tmpdir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("lotgrad_test_run_dir_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(p);
  return p.string();
}
std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}
bool has_temporary(const std::string& dir) {
  for (const auto& n : names_in(dir))
    if (n.find(".tmp.") != std::string::npos) return true;
  return false;
}
// Writes beyond `bytes` in any file fail with EFBIG (a real error from the kernel, as a full
// disk gives ENOSPC) while this lives; SIGXFSZ is ignored so that the write returns the error.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    getrlimit(RLIMIT_FSIZE, &old_);
    struct sigaction ign = {};
    ign.sa_handler = SIG_IGN;
    sigaction(SIGXFSZ, &ign, &old_sig_);
    struct rlimit r = old_;
    r.rlim_cur = bytes;
    REQUIRE(setrlimit(RLIMIT_FSIZE, &r) == 0);
  }
  ~FileSizeLimit() {
    setrlimit(RLIMIT_FSIZE, &old_);
    sigaction(SIGXFSZ, &old_sig_, nullptr);
  }

 private:
  struct rlimit old_ = {};
  struct sigaction old_sig_ = {};
};
// The records of a metrics log without the timing figures (the only fields that differ
// between two runs).
std::vector<std::pair<int64_t, std::map<std::string, double>>> untimed(const std::string& path) {
  std::vector<std::pair<int64_t, std::map<std::string, double>>> out;
  for (auto r : models::read_metrics(path)) {
    r.values.erase("tokens_per_s");
    r.values.erase("ms_per_step");
    out.emplace_back(r.step, r.values);
  }
  return out;
}
}  // namespace

TEST_CASE("save_checkpoint keeps the file it replaces under the name given and a failed write leaves both whole") {
  const std::string dir = tmpdir("rotate"), path = dir + "/last.ckpt", prev = dir + "/prev.ckpt";
  fs::create_directories(dir);
  const NamedTensors a = {{"w", Tensor::full({4}, 1.0)}}, b = {{"w", Tensor::full({4}, 2.0)}};
  save_checkpoint(path, a, {{"step", "1"}}, prev);
  CHECK_FALSE(fs::exists(prev));  // nothing to keep yet
  const std::string bytes_a = read_file(path);
  save_checkpoint(path, b, {{"step", "2"}}, prev);
  CHECK(read_file(prev) == bytes_a);
  const std::string bytes_b = read_file(path);
  CHECK(load_checkpoint(path).metadata.at("step") == "2");
  {  // a third save that cannot be written: the error names the file and the reason
    const NamedTensors big = {{"w", Tensor::zeros({4096}, kFloat64)}};
    FileSizeLimit limit(1024);
    CHECK_THROWS_WITH_AS(save_checkpoint(path, big, {{"step", "3"}}, prev),
                         contains("save_checkpoint: " + path + ": write failed: File too large"), IOError);
  }
  CHECK(read_file(path) == bytes_b);
  CHECK(read_file(prev) == bytes_a);
  CHECK_FALSE(has_temporary(dir));
}

TEST_CASE("metrics log: a failed write names the file and cuts the log back to whole lines") {
  const std::string dir = tmpdir("metrics_full"), path = dir + "/metrics.jsonl";
  fs::create_directories(dir);
  models::MetricsLog log(path, /*fresh=*/true);
  log.write({1, {{"loss", 2.5}}});
  log.write({2, {{"loss", 2.25}}});
  log.sync();
  const std::string before = read_file(path);
  {
    FileSizeLimit limit(before.size() + 5);  // room for 5 bytes of the next line
    CHECK_THROWS_WITH_AS(log.write({3, {{"loss", 2.0}}}),
                         contains("metrics log: " + path + ": write failed: File too large (the line of step 3"),
                         IOError);
  }
  CHECK(read_file(path) == before);  // no cut line
  log.write({3, {{"loss", 2.0}}});  // room again: the log goes on
  REQUIRE(models::read_metrics(path).size() == 3);
  CHECK(models::read_metrics(path)[2].values.at("loss") == 2.0);
}

TEST_CASE("a run directory is locked: a second run is refused naming the holder and the lock dies with its holder") {
  std::ostringstream out;
  models::TrainConfig c = tiny(tmpdir("lock"));
  c.steps = 2;
  fs::create_directories(c.out_dir);
  {  // another process's run, as the lock file shows it (flock conflicts between two opens in one process too)
    const int fd = ::open((c.out_dir + "/lock").c_str(), O_RDWR | O_CREAT, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(::flock(fd, LOCK_EX | LOCK_NB) == 0);
    const std::string who = "pid 4242 on otherhost, started 2025-01-01 00:00:00 UTC\n";
    REQUIRE(::write(fd, who.data(), who.size()) == (ssize_t)who.size());
    CHECK_THROWS_WITH_AS(models::train(c, out),
                         doctest::Contains("is in use by another run (pid 4242 on otherhost, started 2025-01-01"),
                         std::runtime_error);
    models::TrainConfig r = c;
    r.overwrite = true;
    CHECK_THROWS_WITH_AS(models::train(r, out), doctest::Contains("in use by another run"), std::runtime_error);
    CHECK_FALSE(fs::exists(c.out_dir + "/last.ckpt"));  // refused before any work
    ::close(fd);  // the holder ends: its lock goes with it
  }
  CHECK(models::train(c, out).steps_done == 2);
  const std::string holder = read_file(c.out_dir + "/lock");
  CHECK(holder.find("pid " + std::to_string(::getpid()) + " on ") == 0);
  c.resume = true;  // the finished run released the lock
  CHECK(models::train(c, out).steps_done == 2);
}

TEST_CASE("a fresh run writes last.ckpt at step 0: a run stopped before its first periodic checkpoint resumes with the same bits") {
  std::ostringstream out;
  models::TrainConfig full = tiny(tmpdir("step0_full"));
  const models::TrainResult ref = models::train(full, out);
  models::TrainConfig part = tiny(tmpdir("step0_part"));
  part.stop_after = 3;  // "killed" after step 3: only the step-0 checkpoint exists
  models::train(part, out);
  CHECK(load_checkpoint(part.out_dir + "/last.ckpt").metadata.at("step") == "0");
  CHECK_FALSE(fs::exists(part.out_dir + "/prev.ckpt"));
  part.stop_after = 0;
  part.resume = true;
  const models::TrainResult rest = models::train(part, out);
  REQUIRE(rest.losses.size() == ref.losses.size());
  for (size_t i = 0; i < ref.losses.size(); ++i) CHECK(rest.losses[i] == ref.losses[i]);
  for (const char* f : {"/last.ckpt", "/prev.ckpt", "/best.ckpt"}) CHECK(read_file(part.out_dir + f) == read_file(full.out_dir + f));
}

TEST_CASE("a resumed run logs the metrics lines of an uninterrupted one when its progress windows straddle checkpoints") {
  std::ostringstream out;
  models::TrainConfig full = tiny(tmpdir("window_full"));
  full.steps = 12;
  full.log_every = 3;  // windows 1-3, 4-6, ...: the checkpoint at step 4 falls inside one
  models::train(full, out);
  models::TrainConfig part = full;
  part.out_dir = tmpdir("window_part");
  part.stop_after = 5;
  models::train(part, out);
  part.stop_after = 0;
  part.resume = true;
  models::train(part, out);
  const auto a = untimed(full.out_dir + "/metrics.jsonl"), b = untimed(part.out_dir + "/metrics.jsonl");
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO("line " << i + 1 << ", step " << a[i].first);
    CHECK(a[i] == b[i]);
  }
}

TEST_CASE("resume falls back to prev.ckpt when last.ckpt is missing or corrupt and says why") {
  std::ostringstream out;
  models::TrainConfig c = tiny(tmpdir("fallback"));
  const models::TrainResult ref = models::train(c, out);
  const std::string last = c.out_dir + "/last.ckpt", prev = c.out_dir + "/prev.ckpt";
  const std::string last_bytes = read_file(last);
  CHECK(load_checkpoint(prev).metadata.at("step") == "4");
  CHECK(models::resumable_checkpoint(c.out_dir) == last);

  {  // corrupt: one byte changed; taken aside, the run goes on from prev.ckpt (even --quiet says so)
    std::string bad = last_bytes;
    bad[bad.size() / 2] ^= 0x40;
    std::ofstream(last, std::ios::binary) << bad;
  }
  CHECK(models::resumable_checkpoint(c.out_dir) == prev);
  std::string from;  // the configuration comes from the file that was read whole
  CHECK(models::resumable_config(c.out_dir, from).steps == c.steps);
  CHECK(from == prev);
  models::TrainConfig r = c;
  r.resume = true;
  std::ostringstream log;
  const models::TrainResult rest = models::train(r, log);
  CHECK(log.str().find("resumed from " + prev + " at step 4: load_checkpoint: " + last + ": checksum mismatch") !=
        std::string::npos);
  CHECK(log.str().find("it is kept as " + last + ".corrupt") != std::string::npos);
  REQUIRE(rest.losses.size() == 4);
  for (size_t i = 0; i < 4; ++i) CHECK(rest.losses[i] == ref.losses[4 + i]);
  CHECK(read_file(last) == last_bytes);  // the same bits again
  CHECK(fs::exists(last + ".corrupt"));

  fs::remove(last);  // missing: a kill between the two renames of a save
  std::ostringstream log2;
  models::train(r, log2);
  CHECK(log2.str().find("resumed from " + prev + " at step 4: " + last + " does not exist") != std::string::npos);
  CHECK(read_file(last) == last_bytes);

  // neither usable: an error that names both files
  fs::resize_file(last, 100);
  fs::resize_file(prev, 100);
  CHECK_THROWS_WITH_AS(models::resumable_checkpoint(c.out_dir), contains(last + ": truncated"), IOError);
  CHECK_THROWS_WITH_AS(models::resumable_checkpoint(c.out_dir), contains(prev + ": truncated"), IOError);
  CHECK_THROWS_AS(models::train(r, log2), IOError);
  // and nothing at all: "nothing to resume"
  fs::remove(last);
  fs::remove(prev);
  CHECK_THROWS_WITH_AS(models::train(r, log2), doctest::Contains("nothing to resume"), std::invalid_argument);
}

TEST_CASE("stale temporary files of a killed save are removed at the start of a run and other files are kept") {
  std::ostringstream out;
  models::TrainConfig c = tiny(tmpdir("stale"));
  c.steps = 4;
  models::train(c, out);
  for (const char* name : {"last.ckpt.tmp.12345", "metrics.jsonl.tmp.7", "best.ckpt.tmp.x", "notes.tmp.3"})
    std::ofstream(c.out_dir + "/" + name) << "half a file";
  c.resume = true;
  std::ostringstream log;
  models::train(c, log);
  CHECK(log.str().find("removed " + c.out_dir + "/last.ckpt.tmp.12345 (a save cut by a kill)") != std::string::npos);
  CHECK(log.str().find("metrics.jsonl.tmp.7") != std::string::npos);
  const auto names = names_in(c.out_dir);
  CHECK(names == std::vector<std::string>{"best.ckpt", "best.ckpt.tmp.x", "config.json", "last.ckpt", "lock",
                                          "metrics.jsonl", "notes.tmp.3", "prev.ckpt"});
}

TEST_CASE("--overwrite removes the earlier run's checkpoints before it starts") {
  std::ostringstream out;
  models::TrainConfig c = tiny(tmpdir("overwrite"));
  models::train(c, out);
  REQUIRE(fs::exists(c.out_dir + "/prev.ckpt"));
  models::TrainConfig o = c;
  o.overwrite = true;
  o.seed = 6;
  o.stop_after = 1;  // stopped before any evaluation or periodic checkpoint
  models::train(o, out);
  CHECK_FALSE(fs::exists(c.out_dir + "/prev.ckpt"));  // the earlier run's, which a fallback would have taken
  CHECK_FALSE(fs::exists(c.out_dir + "/best.ckpt"));
  CHECK(models::stored_config(c.out_dir + "/last.ckpt").seed == 6);
  for (const auto& r : models::read_metrics(c.out_dir + "/metrics.jsonl")) CHECK(r.step == 1);  // none of the earlier run's
}
