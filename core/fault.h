// Fault injection for the crash-safety tests (tests/fault_test.sh): makes a process die or
// a write fail at an exact, repeatable moment instead of after a random delay.
//
//   LOTGRAD_FAULT_KILL_AT=<event>:<n>   SIGKILL this process at the n-th <event> (n >= 1)
//   LOTGRAD_FAULT_ENOSPC=<event>:<n>    the n-th <event>'s write fails as on a full disk
//
// Events, counted from 1 in each process:
//   checkpoint  a save_checkpoint (last.ckpt and best.ckpt alike): kill leaves the temporary
//               file half written; ENOSPC fails it after half its bytes
//   rotate      a save that keeps the previous file (last.ckpt -> prev.ckpt): kill between
//               the two renames (prev.ckpt holds the old last.ckpt, last.ckpt is missing)
//   metrics     a metrics.jsonl line: kill after half the line; ENOSPC after half the line
//   step        a training step: kill before it runs
// Both variables are read once, at the first event; unset (the normal case), an event costs
// a test of a flag. A malformed value is an std::invalid_argument naming the variable.
//
//   LOTGRAD_FAULT_RANK=<r>   under mpirun, only the process of rank r arms its faults (this
//                            and LOTGRAD_FAULT_NAN_GRAD, models/divergence.h); unset: every rank
#pragma once

namespace lotgrad::fault {

enum class Action { none, kill, enospc };

// Counts one occurrence of event and says what to do at it.
Action at(const char* event);
// False when LOTGRAD_FAULT_RANK names another rank than this process's (the launcher's
// OMPI_COMM_WORLD_RANK or PMI_RANK; 0 outside mpirun).
bool armed_on_this_rank();
// SIGKILL this process (as `kill -9` would: no handler, no flush, no destructor runs).
[[noreturn]] void kill_now();

}  // namespace lotgrad::fault
