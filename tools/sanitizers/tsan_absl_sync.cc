// Linked into every binary built with --config=tsan (the config's
// --custom_malloc), never into a product build.
//
// Why: absl::Mutex, absl::CondVar and absl::Notification live in Debian's
// libabsl_synchronization.so, compiled without -fsanitize=thread. Their lock
// word is a plain atomic and their waits are raw futex calls, so ThreadSanitizer
// sees none of their synchronisation: every access to data an absl::Mutex
// guards would be reported as a race (and nothing real could be told from
// those). Upstream abseil built with TSan annotates itself
// (absl/base/internal/tsan_mutex_interface.h); this file adds the same
// annotations from outside, by interposing the exported functions: the
// executable's definitions win over the shared library's (for our code and
// for gRPC's own calls through the PLT), and each calls the library's through
// dlsym(RTLD_NEXT).
//
// What TSan is told: lock/unlock of a reader-writer mutex (so data races on
// data that the code reads or writes without the lock are still reported, and
// lock-order inversions too); a wait on a Condition or CondVar releases the
// mutex and takes it again; Notify happens before a wait that returns true.
// Calls from Debian's libraries themselves (gRPC's own mutexes) are passed
// through unannotated (see Foreign below). Accesses made inside the library
// calls are ignored: a Condition is
// evaluated by whichever thread unlocks, while it holds the mutex, which TSan
// cannot be told from outside (upstream uses its "divert" annotation inside
// the library for this).
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>

#include "absl/time/time.h"

extern "C" {
void AnnotateIgnoreReadsBegin(const char* file, int line);
void AnnotateIgnoreReadsEnd(const char* file, int line);
void AnnotateIgnoreWritesBegin(const char* file, int line);
void AnnotateIgnoreWritesEnd(const char* file, int line);
}

namespace {

struct Mutex;
struct CondVar;
struct Condition;
struct Notification;

template <typename Fn>
Fn Real(const char* name, std::atomic<void*>& cache) {
  void* p = cache.load(std::memory_order_acquire);
  if (p == nullptr) {
    p = ::dlsym(RTLD_NEXT, name);
    if (p == nullptr) {
      std::fprintf(stderr, "tsan_absl_sync: %s not found: %s\n", name, ::dlerror());
      std::abort();
    }
    cache.store(p, std::memory_order_release);
  }
  return reinterpret_cast<Fn>(p);
}

#define REAL(ret, mangled, ...)                 \
  static std::atomic<void*> cache_##mangled;    \
  auto real = Real<ret (*)(__VA_ARGS__)>(#mangled, cache_##mangled)

// Set while this thread is inside one of the library's functions: the
// library calls its own exported functions through the PLT too (e.g.
// CondVar::WaitWithTimeout calls WaitWithDeadline), and only the outermost
// call is annotated.
thread_local bool t_inside = false;

// True when the caller is code we did not build (a Debian shared library:
// gRPC, protobuf, absl itself). Its mutexes guard memory that TSan cannot
// see it touch, and objects it hands between threads through its own
// lock-free queues; annotating its locks would only give TSan half of its
// synchronisation and make it report races between the two halves. Only
// our (instrumented) code's lock operations are annotated.
bool Foreign(void* caller) {
  thread_local void* last_caller = nullptr;
  thread_local bool last_foreign = false;
  if (caller == last_caller) return last_foreign;
  Dl_info info;
  bool foreign = ::dladdr(caller, &info) != 0 && info.dli_fname != nullptr &&
                 (__builtin_strncmp(info.dli_fname, "/usr/lib/", 9) == 0 ||
                  __builtin_strncmp(info.dli_fname, "/lib/", 5) == 0);
  last_caller = caller;
  last_foreign = foreign;
  return foreign;
}

// A foreign caller's call, passed through: nested calls (also those that
// the library makes as tail calls, whose return address is then ours) are
// passed through too.
struct PassThrough {
  PassThrough() { t_inside = true; }
  ~PassThrough() { t_inside = false; }
};

// Accesses inside the library (its own words, Conditions it evaluates) are
// not ours to check.
struct IgnoreInside {
  IgnoreInside() {
    t_inside = true;
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
  }
  ~IgnoreInside() {
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
    t_inside = false;
  }
};

constexpr unsigned kRead = __tsan_mutex_read_lock;
constexpr unsigned kTry = __tsan_mutex_try_lock;
constexpr unsigned kTryFailed = __tsan_mutex_try_lock_failed;

void Locked(void* mu, unsigned flags) { __tsan_mutex_post_lock(mu, flags, 0); }
void Unlocking(void* mu, unsigned flags) { __tsan_mutex_pre_unlock(mu, flags); }
void Unlocked(void* mu, unsigned flags) { __tsan_mutex_post_unlock(mu, flags); }

// A wait that gives the mutex up and takes it back (Await, CondVar::Wait):
// `read` when held in reader mode.
template <typename F>
auto Rewait(void* mu, unsigned flags, F&& f) {
  Unlocking(mu, flags);
  Unlocked(mu, flags);
  __tsan_mutex_pre_lock(mu, flags);
  auto r = [&] {
    IgnoreInside ignore;
    return f();
  }();
  Locked(mu, flags);
  return r;
}

}  // namespace

// The symbols of absl::debian3 (Debian 12's libabsl 20220623) they replace.
extern "C" {

// ---- Mutex: exclusive
void TsanMutexLock(Mutex* mu) __asm__("_ZN4absl7debian35Mutex4LockEv");
void TsanMutexLock(Mutex* mu) {
  REAL(void, _ZN4absl7debian35Mutex4LockEv, Mutex*);
  if (t_inside) return real(mu);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(mu);
  }
  __tsan_mutex_pre_lock(mu, 0);
  {
    IgnoreInside ignore;
    real(mu);
  }
  Locked(mu, 0);
}

void TsanMutexUnlock(Mutex* mu) __asm__("_ZN4absl7debian35Mutex6UnlockEv");
void TsanMutexUnlock(Mutex* mu) {
  REAL(void, _ZN4absl7debian35Mutex6UnlockEv, Mutex*);
  if (t_inside) return real(mu);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(mu);
  }
  Unlocking(mu, 0);
  {
    IgnoreInside ignore;
    real(mu);
  }
  Unlocked(mu, 0);
}

bool TsanMutexTryLock(Mutex* mu) __asm__("_ZN4absl7debian35Mutex7TryLockEv");
bool TsanMutexTryLock(Mutex* mu) {
  REAL(bool, _ZN4absl7debian35Mutex7TryLockEv, Mutex*);
  if (t_inside) return real(mu);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(mu);
  }
  __tsan_mutex_pre_lock(mu, kTry);
  bool ok;
  {
    IgnoreInside ignore;
    ok = real(mu);
  }
  Locked(mu, ok ? kTry : kTry | kTryFailed);
  return ok;
}

// ---- Mutex: shared
void TsanMutexReaderLock(Mutex* mu) __asm__("_ZN4absl7debian35Mutex10ReaderLockEv");
void TsanMutexReaderLock(Mutex* mu) {
  REAL(void, _ZN4absl7debian35Mutex10ReaderLockEv, Mutex*);
  if (t_inside) return real(mu);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(mu);
  }
  __tsan_mutex_pre_lock(mu, kRead);
  {
    IgnoreInside ignore;
    real(mu);
  }
  Locked(mu, kRead);
}

void TsanMutexReaderUnlock(Mutex* mu) __asm__("_ZN4absl7debian35Mutex12ReaderUnlockEv");
void TsanMutexReaderUnlock(Mutex* mu) {
  REAL(void, _ZN4absl7debian35Mutex12ReaderUnlockEv, Mutex*);
  if (t_inside) return real(mu);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(mu);
  }
  Unlocking(mu, kRead);
  {
    IgnoreInside ignore;
    real(mu);
  }
  Unlocked(mu, kRead);
}

bool TsanMutexReaderTryLock(Mutex* mu) __asm__("_ZN4absl7debian35Mutex13ReaderTryLockEv");
bool TsanMutexReaderTryLock(Mutex* mu) {
  REAL(bool, _ZN4absl7debian35Mutex13ReaderTryLockEv, Mutex*);
  if (t_inside) return real(mu);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(mu);
  }
  __tsan_mutex_pre_lock(mu, kRead | kTry);
  bool ok;
  {
    IgnoreInside ignore;
    ok = real(mu);
  }
  Locked(mu, ok ? kRead | kTry : kRead | kTry | kTryFailed);
  return ok;
}

// ---- Mutex: lock when a Condition holds (always returns with it held)
void TsanMutexLockWhen(Mutex* mu, const Condition& c)
    __asm__("_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE");
void TsanMutexLockWhen(Mutex* mu, const Condition& c) {
  REAL(void, _ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE, Mutex*, const Condition&);
  if (t_inside) return real(mu, c);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(mu, c);
  }
  __tsan_mutex_pre_lock(mu, 0);
  {
    IgnoreInside ignore;
    real(mu, c);
  }
  Locked(mu, 0);
}

void TsanMutexReaderLockWhen(Mutex* mu, const Condition& c)
    __asm__("_ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE");
void TsanMutexReaderLockWhen(Mutex* mu, const Condition& c) {
  REAL(void, _ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE, Mutex*,
       const Condition&);
  if (t_inside) return real(mu, c);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(mu, c);
  }
  __tsan_mutex_pre_lock(mu, kRead);
  {
    IgnoreInside ignore;
    real(mu, c);
  }
  Locked(mu, kRead);
}

bool TsanMutexLockWhenWithTimeout(Mutex* mu, const Condition& c, absl::Duration d)
    __asm__("_ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
bool TsanMutexLockWhenWithTimeout(Mutex* mu, const Condition& c, absl::Duration d) {
  REAL(bool, _ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE,
       Mutex*, const Condition&, absl::Duration);
  if (t_inside) return real(mu, c, d);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(mu, c, d);
  }
  __tsan_mutex_pre_lock(mu, 0);
  bool r;
  {
    IgnoreInside ignore;
    r = real(mu, c, d);
  }
  Locked(mu, 0);
  return r;
}

bool TsanMutexLockWhenWithDeadline(Mutex* mu, const Condition& c, absl::Time t)
    __asm__("_ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
bool TsanMutexLockWhenWithDeadline(Mutex* mu, const Condition& c, absl::Time t) {
  REAL(bool, _ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE, Mutex*,
       const Condition&, absl::Time);
  if (t_inside) return real(mu, c, t);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(mu, c, t);
  }
  __tsan_mutex_pre_lock(mu, 0);
  bool r;
  {
    IgnoreInside ignore;
    r = real(mu, c, t);
  }
  Locked(mu, 0);
  return r;
}

bool TsanMutexReaderLockWhenWithTimeout(Mutex* mu, const Condition& c, absl::Duration d)
    __asm__("_ZN4absl7debian35Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
bool TsanMutexReaderLockWhenWithTimeout(Mutex* mu, const Condition& c, absl::Duration d) {
  REAL(bool, _ZN4absl7debian35Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE,
       Mutex*, const Condition&, absl::Duration);
  if (t_inside) return real(mu, c, d);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(mu, c, d);
  }
  __tsan_mutex_pre_lock(mu, kRead);
  bool r;
  {
    IgnoreInside ignore;
    r = real(mu, c, d);
  }
  Locked(mu, kRead);
  return r;
}

bool TsanMutexReaderLockWhenWithDeadline(Mutex* mu, const Condition& c, absl::Time t)
    __asm__("_ZN4absl7debian35Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
bool TsanMutexReaderLockWhenWithDeadline(Mutex* mu, const Condition& c, absl::Time t) {
  REAL(bool, _ZN4absl7debian35Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE,
       Mutex*, const Condition&, absl::Time);
  if (t_inside) return real(mu, c, t);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(mu, c, t);
  }
  __tsan_mutex_pre_lock(mu, kRead);
  bool r;
  {
    IgnoreInside ignore;
    r = real(mu, c, t);
  }
  Locked(mu, kRead);
  return r;
}

// ---- Mutex: wait for a Condition while held (exclusive mode: every caller
// of Await in this tree holds the mutex exclusively, and absl's own
// AwaitCommon asserts the mode it finds)
void TsanMutexAwait(Mutex* mu, const Condition& c)
    __asm__("_ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE");
void TsanMutexAwait(Mutex* mu, const Condition& c) {
  REAL(void, _ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE, Mutex*, const Condition&);
  if (t_inside) return real(mu, c);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(mu, c);
  }
  Rewait(mu, 0, [&] {
    real(mu, c);
    return 0;
  });
}

bool TsanMutexAwaitWithTimeout(Mutex* mu, const Condition& c, absl::Duration d)
    __asm__("_ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
bool TsanMutexAwaitWithTimeout(Mutex* mu, const Condition& c, absl::Duration d) {
  REAL(bool, _ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE, Mutex*,
       const Condition&, absl::Duration);
  if (t_inside) return real(mu, c, d);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(mu, c, d);
  }
  return Rewait(mu, 0, [&] { return real(mu, c, d); });
}

bool TsanMutexAwaitWithDeadline(Mutex* mu, const Condition& c, absl::Time t)
    __asm__("_ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
bool TsanMutexAwaitWithDeadline(Mutex* mu, const Condition& c, absl::Time t) {
  REAL(bool, _ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE, Mutex*,
       const Condition&, absl::Time);
  if (t_inside) return real(mu, c, t);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(mu, c, t);
  }
  return Rewait(mu, 0, [&] { return real(mu, c, t); });
}

// ---- Mutex: destruction (its address may hold another mutex next)
void TsanMutexDtor(Mutex* mu) __asm__("_ZN4absl7debian35MutexD1Ev");
void TsanMutexDtor(Mutex* mu) {
  REAL(void, _ZN4absl7debian35MutexD1Ev, Mutex*);
  if (t_inside) return real(mu);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(mu);
  }
  __tsan_mutex_destroy(mu, 0);
  IgnoreInside ignore;
  real(mu);
}
void TsanMutexDtor2(Mutex* mu) __asm__("_ZN4absl7debian35MutexD2Ev");
void TsanMutexDtor2(Mutex* mu) {
  REAL(void, _ZN4absl7debian35MutexD2Ev, Mutex*);
  if (t_inside) return real(mu);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(mu);
  }
  __tsan_mutex_destroy(mu, 0);
  IgnoreInside ignore;
  real(mu);
}

// ---- CondVar: Wait gives the (exclusively held) mutex up and takes it back
void TsanCondVarWait(CondVar* cv, Mutex* mu) __asm__("_ZN4absl7debian37CondVar4WaitEPNS0_5MutexE");
void TsanCondVarWait(CondVar* cv, Mutex* mu) {
  REAL(void, _ZN4absl7debian37CondVar4WaitEPNS0_5MutexE, CondVar*, Mutex*);
  if (t_inside) return real(cv, mu);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(cv, mu);
  }
  Rewait(mu, 0, [&] {
    real(cv, mu);
    return 0;
  });
}

bool TsanCondVarWaitWithTimeout(CondVar* cv, Mutex* mu, absl::Duration d)
    __asm__("_ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
bool TsanCondVarWaitWithTimeout(CondVar* cv, Mutex* mu, absl::Duration d) {
  REAL(bool, _ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE, CondVar*,
       Mutex*, absl::Duration);
  if (t_inside) return real(cv, mu, d);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(cv, mu, d);
  }
  return Rewait(mu, 0, [&] { return real(cv, mu, d); });
}

bool TsanCondVarWaitWithDeadline(CondVar* cv, Mutex* mu, absl::Time t)
    __asm__("_ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
bool TsanCondVarWaitWithDeadline(CondVar* cv, Mutex* mu, absl::Time t) {
  REAL(bool, _ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE, CondVar*, Mutex*,
       absl::Time);
  if (t_inside) return real(cv, mu, t);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(cv, mu, t);
  }
  return Rewait(mu, 0, [&] { return real(cv, mu, t); });
}

// ---- Notification: Notify happens before a wait that sees it
void TsanNotify(Notification* n) __asm__("_ZN4absl7debian312Notification6NotifyEv");
void TsanNotify(Notification* n) {
  REAL(void, _ZN4absl7debian312Notification6NotifyEv, Notification*);
  if (t_inside) return real(n);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(n);
  }
  __tsan_release(n);
  IgnoreInside ignore;
  real(n);
}

void TsanWaitForNotification(const Notification* n)
    __asm__("_ZNK4absl7debian312Notification19WaitForNotificationEv");
void TsanWaitForNotification(const Notification* n) {
  REAL(void, _ZNK4absl7debian312Notification19WaitForNotificationEv, const Notification*);
  if (t_inside) return real(n);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(n);
  }
  {
    IgnoreInside ignore;
    real(n);
  }
  __tsan_acquire(const_cast<Notification*>(n));
}

bool TsanWaitForNotificationWithTimeout(const Notification* n, absl::Duration d)
    __asm__("_ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE");
bool TsanWaitForNotificationWithTimeout(const Notification* n, absl::Duration d) {
  REAL(bool, _ZNK4absl7debian312Notification30WaitForNotificationWithTimeoutENS0_8DurationE,
       const Notification*, absl::Duration);
  if (t_inside) return real(n, d);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(n, d);
  }
  bool r;
  {
    IgnoreInside ignore;
    r = real(n, d);
  }
  if (r) __tsan_acquire(const_cast<Notification*>(n));
  return r;
}

bool TsanWaitForNotificationWithDeadline(const Notification* n, absl::Time t)
    __asm__("_ZNK4absl7debian312Notification31WaitForNotificationWithDeadlineENS0_4TimeE");
bool TsanWaitForNotificationWithDeadline(const Notification* n, absl::Time t) {
  REAL(bool, _ZNK4absl7debian312Notification31WaitForNotificationWithDeadlineENS0_4TimeE,
       const Notification*, absl::Time);
  if (t_inside) return real(n, t);
  if (Foreign(__builtin_return_address(0))) {
    PassThrough p;
    return real(n, t);
  }
  bool r;
  {
    IgnoreInside ignore;
    r = real(n, t);
  }
  if (r) __tsan_acquire(const_cast<Notification*>(n));
  return r;
}

}  // extern "C"
