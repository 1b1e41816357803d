#include "fault.h"

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

namespace lotgrad::fault {

namespace {
struct Trigger {
  std::string event;
  long long n = 0;
  Action action = Action::none;
};

Trigger parse(const char* var, Action action) {
  const char* v = std::getenv(var);
  if (!v || !*v) return {};
  const std::string s = v;
  const size_t colon = s.rfind(':');
  const std::string event = colon == std::string::npos ? "" : s.substr(0, colon);
  long long n = 0;
  size_t used = 0;
  try {
    n = std::stoll(s.substr(colon == std::string::npos ? 0 : colon + 1), &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (event != "checkpoint" && event != "rotate" && event != "metrics" && event != "step")
    throw std::invalid_argument(std::string(var) + "=" + s +
                                ": expected <event>:<n> with event checkpoint, rotate, metrics or step");
  if (used == 0 || colon + 1 + used != s.size() || n < 1)
    throw std::invalid_argument(std::string(var) + "=" + s + ": the count after ':' must be an integer >= 1");
  return {event, n, action};
}

long long env_integer(const char* var, long long otherwise) {
  const char* v = std::getenv(var);
  if (!v || !*v) return otherwise;
  size_t used = 0;
  long long n = -1;
  try {
    n = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || v[used] != '\0' || n < 0)
    throw std::invalid_argument(std::string(var) + "=" + v + ": expected an integer >= 0");
  return n;
}

struct Faults {
  Trigger kill, enospc;
  std::map<std::string, long long> seen;
  std::mutex m;
  Faults() : kill(parse("LOTGRAD_FAULT_KILL_AT", Action::kill)), enospc(parse("LOTGRAD_FAULT_ENOSPC", Action::enospc)) {}
  bool armed() const {
    return (kill.action != Action::none || enospc.action != Action::none) && armed_on_this_rank();
  }
};
}  // namespace

Action at(const char* event) {
  static Faults f;  // read once; a malformed variable throws again at every event
  if (!f.armed()) return Action::none;
  std::lock_guard<std::mutex> lock(f.m);
  const long long k = ++f.seen[event];
  for (const Trigger* t : {&f.kill, &f.enospc})
    if (t->action != Action::none && t->event == event && t->n == k) return t->action;
  return Action::none;
}

bool armed_on_this_rank() {
  const long long want = env_integer("LOTGRAD_FAULT_RANK", -1);
  if (want < 0) return true;
  return env_integer("OMPI_COMM_WORLD_RANK", env_integer("PMI_RANK", 0)) == want;
}

void kill_now() {
  ::kill(::getpid(), SIGKILL);
  std::abort();  // not reached: SIGKILL cannot be caught
}

}  // namespace lotgrad::fault
