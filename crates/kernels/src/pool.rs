//! A persistent thread pool for the kernels: `parallel_for(n, f)` runs `f(0..n)` on the pool's
//! threads and the caller, and returns when every task is done. [`ThreadPool::install`] runs a
//! whole computation on the pool's leader thread, so its per-thread scratch and allocator arenas
//! stay in one thread whichever thread calls (Node calls from any of libuv's).
//!
//! Why not rayon: a decode step is ~200 small parallel ops. Rayon's idle workers go to sleep
//! within microseconds and each op pays to wake them; here workers spin on a generation counter
//! between ops (and park only after a longer idle time), a dispatch is a few atomic writes, and
//! nothing is allocated per op, so a pre-planned decode step allocates nothing at all.
use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks: covers the gap between ops and between decode
/// steps (sampling), short enough not to hold a core when the engine is idle.
const SPIN: Duration = Duration::from_millis(2);
/// The leader waits for the next `install` only briefly (one hand-off per forward call): its
/// caller is sampling meanwhile and needs the core.
const LEADER_SPIN: Duration = Duration::from_micros(100);

/// A task body with its lifetime erased; only dereferenced while its `parallel_for` call waits.
type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// `generation << 32 | next task index`: a worker claims a task with one compare-exchange, and
    /// a claim made for an older generation fails.
    state: AtomicU64,
    tasks: AtomicUsize,
    done: AtomicUsize,
    /// The job of the current generation: written before the generation is published, read
    /// only after a task of it is claimed (the claim acquires the publishing store).
    job: UnsafeCell<Job>,
    /// The first panic of the current job's tasks, re-raised on the caller once all are done
    /// (a worker must not die: the caller would wait for its tasks forever).
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    sleepers: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

// SAFETY: `job` is the only non-Sync field; its accesses are ordered by `state` (see above).
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

fn idle_job(_: usize) {}

/// `threads` compute threads: a leader (runs [`ThreadPool::install`] jobs and takes part in their
/// tasks) and `threads - 1` workers.
pub struct ThreadPool {
    shared: Arc<Shared>,
    leader: Arc<Leader>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
    /// One `parallel_for` at a time per pool (callers from several threads take turns per op).
    dispatch: Mutex<()>,
}

thread_local! {
    /// The pool `parallel_for` uses on this thread (set by [`ThreadPool::install`]).
    static CURRENT: Cell<*const ThreadPool> = const { Cell::new(std::ptr::null()) };
    /// Inside a task: nested `parallel_for` calls run serially.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    /// 0 on callers, `1..threads` on a pool's workers.
    static THREAD_INDEX: Cell<usize> = const { Cell::new(0) };
    /// On a pool's leader thread (a nested `install` runs in place).
    static IS_LEADER: Cell<bool> = const { Cell::new(false) };
}

/// An `install` job on the caller's stack, its lifetime erased (the caller waits for it).
struct LeaderJob(*mut (dyn FnMut() + Send), *const ThreadPool);
unsafe impl Send for LeaderJob {}

/// The hand-off of `install` jobs to the leader thread.
struct Leader {
    slot: Mutex<Option<LeaderJob>>,
    pending: AtomicBool,
    wake: Condvar,
    done: Mutex<bool>,
    finished: Condvar,
    /// One `install` at a time (concurrent callers take turns per call).
    turn: Mutex<()>,
    shutdown: AtomicBool,
}

fn leader(l: &Leader) {
    IS_LEADER.with(|t| t.set(true));
    loop {
        let started = Instant::now();
        let mut spins = 0u32;
        while !l.pending.load(Acquire) && !l.shutdown.load(Acquire) {
            spins = spins.wrapping_add(1);
            if spins % 256 == 0 && started.elapsed() > LEADER_SPIN {
                let mut slot = l.slot.lock().unwrap_or_else(|e| e.into_inner());
                while !l.pending.load(Acquire) && !l.shutdown.load(Acquire) {
                    slot = l.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
                }
                break;
            }
            std::hint::spin_loop();
        }
        if l.shutdown.load(Acquire) {
            return;
        }
        let Some(LeaderJob(job, pool)) = l.slot.lock().unwrap_or_else(|e| e.into_inner()).take() else { continue };
        l.pending.store(false, Release);
        CURRENT.with(|c| c.set(pool));
        // SAFETY: the caller waits on `done` until this returns; the job catches its own panics.
        unsafe { (*job)() };
        CURRENT.with(|c| c.set(std::ptr::null()));
        *l.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        l.finished.notify_all();
    }
}

/// This thread's index in its pool: 0 for the calling thread, `1..threads` for the workers. Tasks
/// of one `parallel_for` running at the same time have distinct indices (per-thread scratch).
pub fn thread_index() -> usize {
    THREAD_INDEX.with(|i| i.get())
}

impl ThreadPool {
    /// A pool of `threads` (>= 1) compute threads: the leader plus `threads - 1` workers.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            tasks: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            job: UnsafeCell::new(&idle_job as &(dyn Fn(usize) + Sync) as Job),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            park: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        // Each thread checks in once it runs: `new` returns when all have, so that no thread's
        // start-up (the runtime's own allocations) happens later, in the middle of serving.
        let started = Arc::new((Mutex::new(0usize), Condvar::new()));
        let check_in = |started: &(Mutex<usize>, Condvar)| {
            *started.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            started.1.notify_all();
        };
        let mut workers = Vec::new();
        for i in 1..threads {
            let (s, started) = (shared.clone(), started.clone());
            workers.push(std::thread::Builder::new().name(format!("nano-qwen3-{i}")).spawn(move || {
                THREAD_INDEX.with(|t| t.set(i));
                check_in(&started);
                worker(&s)
            })?);
        }
        let leader = Arc::new(Leader {
            slot: Mutex::new(None),
            pending: AtomicBool::new(false),
            wake: Condvar::new(),
            done: Mutex::new(false),
            finished: Condvar::new(),
            turn: Mutex::new(()),
            shutdown: AtomicBool::new(false),
        });
        let (l, s) = (leader.clone(), started.clone());
        workers.push(std::thread::Builder::new().name("nano-qwen3-0".into()).spawn(move || {
            check_in(&s);
            self::leader(&l)
        })?);
        let mut count = started.0.lock().unwrap_or_else(|e| e.into_inner());
        while *count < threads {
            count = started.1.wait(count).unwrap_or_else(|e| e.into_inner());
        }
        drop(count);
        Ok(Self { shared, leader, workers, threads, dispatch: Mutex::new(()) })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Run `f` on the pool's leader thread, with this pool current there for [`parallel_for`];
    /// the caller blocks until it returns (a panic in `f` is re-raised here). Allocates nothing.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        // Already on the leader, or inside a task (waiting for the leader would deadlock): in place.
        if IS_LEADER.with(|t| t.get()) || IN_TASK.with(|t| t.get()) {
            return self.enter(f);
        }
        let l = &*self.leader;
        let _turn = l.turn.lock().unwrap_or_else(|e| e.into_inner());
        let (mut f, mut out) = (Some(f), None);
        let mut job = || out = Some(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f.take().expect("runs once"))));
        let job: &mut (dyn FnMut() + Send) = &mut job;
        // SAFETY (lifetime erasure): the leader runs the job before setting `done`, and this call
        // waits for `done`, so the borrow outlives every use.
        let job: *mut (dyn FnMut() + Send) = unsafe { std::mem::transmute(job) };
        *l.done.lock().unwrap_or_else(|e| e.into_inner()) = false;
        {
            let mut slot = l.slot.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(LeaderJob(job, self));
            l.pending.store(true, Release);
            l.wake.notify_one();
        }
        let mut done = l.done.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            done = l.finished.wait(done).unwrap_or_else(|e| e.into_inner());
        }
        drop(done);
        match out.expect("the leader ran the job") {
            Ok(r) => r,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    }

    /// Run `f` on the calling thread with this pool as its pool for [`parallel_for`] (the caller
    /// takes part in the tasks). For work that must stay on its thread (inside another pool).
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        let prev = CURRENT.with(|c| c.replace(self));
        struct Restore(*const ThreadPool);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(prev);
        f()
    }

    /// `f(i)` for every `i < tasks`, on all threads; returns when all are done.
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if tasks == 0 {
            return;
        }
        if self.threads == 1 || tasks == 1 || IN_TASK.with(|t| t.get()) {
            return (0..tasks).for_each(f);
        }
        assert!(tasks < u32::MAX as usize, "pool: {tasks} tasks");
        let _turn = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY (lifetime erasure): workers dereference the job only for a task they claimed in
        // this generation, and this call returns only after all those tasks are done.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        // SAFETY: no worker reads `job` now: every claim of the last generation has finished.
        unsafe { *s.job.get() = job };
        s.tasks.store(tasks, Relaxed);
        s.done.store(0, Relaxed);
        let generation = (s.state.load(Relaxed) >> 32) + 1;
        s.state.store(generation << 32, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.park.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let finished = claim_and_run(s, generation, tasks);
        let mut spins = 0u32;
        while s.done.load(Acquire) + finished < tasks {
            spins = spins.wrapping_add(1);
            if spins % 4096 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        if let Some(payload) = s.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
            std::panic::resume_unwind(payload);
        }
    }
}

/// Claim tasks of `generation` until none are left; how many this thread ran (not yet in `done`).
fn claim_and_run(s: &Shared, generation: u64, tasks: usize) -> usize {
    let mut ran = 0;
    let mut v = s.state.load(Acquire);
    loop {
        if v >> 32 != generation || (v & 0xffff_ffff) as usize >= tasks {
            return ran;
        }
        match s.state.compare_exchange_weak(v, v + 1, AcqRel, Acquire) {
            Ok(_) => {
                // SAFETY: the claim succeeded for this generation, so its job is still borrowed
                // by the waiting caller (which stored it before publishing the generation).
                let job: Job = unsafe { *s.job.get() };
                let was = IN_TASK.with(|t| t.replace(true));
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { (*job)((v & 0xffff_ffff) as usize) }));
                IN_TASK.with(|t| t.set(was));
                if let Err(payload) = result {
                    s.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(payload);
                }
                ran += 1;
                v += 1;
            }
            Err(actual) => v = actual,
        }
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        // Spin for the next generation, then park.
        let started = Instant::now();
        let mut spins = 0u32;
        let generation = loop {
            let g = s.state.load(Acquire) >> 32;
            if g != seen || s.shutdown.load(Relaxed) {
                break g;
            }
            spins = spins.wrapping_add(1);
            if spins % 1024 != 0 {
                std::hint::spin_loop();
            } else if started.elapsed() <= SPIN {
                // Where cores are oversubscribed (several engines, other work), let others run.
                std::thread::yield_now();
            } else {
                s.sleepers.fetch_add(1, SeqCst);
                let mut guard = s.park.lock().unwrap_or_else(|e| e.into_inner());
                while s.state.load(SeqCst) >> 32 == seen && !s.shutdown.load(SeqCst) {
                    guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                drop(guard);
                s.sleepers.fetch_sub(1, SeqCst);
            }
        };
        if s.shutdown.load(Relaxed) {
            return;
        }
        seen = generation;
        let tasks = s.tasks.load(Acquire);
        let ran = claim_and_run(s, generation, tasks);
        if ran > 0 {
            s.done.fetch_add(ran, Release);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.leader.shutdown.store(true, SeqCst);
        {
            let _g = self.leader.slot.lock().unwrap_or_else(|e| e.into_inner());
            self.leader.wake.notify_all();
        }
        self.shared.shutdown.store(true, SeqCst);
        {
            let _g = self.shared.park.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The pool used outside any [`ThreadPool::install`]: one thread per available core.
fn default_pool() -> &'static ThreadPool {
    static POOL: OnceLock<ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        ThreadPool::new(n).expect("cannot start the kernel threads")
    })
}

fn with_current<R>(f: impl FnOnce(&ThreadPool) -> R) -> R {
    let p = CURRENT.with(|c| c.get());
    // SAFETY: `install` keeps the pool borrowed while it is current.
    f(if p.is_null() { default_pool() } else { unsafe { &*p } })
}

/// Threads of the current pool (1 inside a task: nested work runs serially).
pub fn current_threads() -> usize {
    if IN_TASK.with(|t| t.get()) {
        return 1;
    }
    with_current(|p| p.threads())
}

/// `f(i)` for every `i < tasks` on the current pool.
pub fn parallel_for(tasks: usize, f: impl Fn(usize) + Sync) {
    with_current(|p| p.run(tasks, &f))
}

/// `f(i, chunk)` for each `chunk_len` piece of `out` (the last may be shorter), in parallel.
pub fn parallel_chunks_mut<T: Send>(out: &mut [T], chunk_len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let chunk_len = chunk_len.max(1);
    let (ptr, len) = (OutPtr::new(out), out.len());
    parallel_for(len.div_ceil(chunk_len), |i| {
        let start = i * chunk_len;
        // SAFETY: each task gets a distinct, in-bounds chunk of `out`, borrowed for this call.
        let chunk = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(start), chunk_len.min(len - start)) };
        f(i, chunk)
    })
}

/// [`parallel_chunks_mut`] over two slices cut into the same number of chunks: `f(i, a_i, b_i)`.
pub fn parallel_chunks_mut2<A: Send, B: Send>(
    a: &mut [A],
    a_chunk: usize,
    b: &mut [B],
    b_chunk: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync,
) {
    let (a_chunk, b_chunk) = (a_chunk.max(1), b_chunk.max(1));
    let tasks = a.len().div_ceil(a_chunk);
    assert_eq!(tasks, b.len().div_ceil(b_chunk), "parallel_chunks_mut2: the slices cut into different chunk counts");
    let (pa, la, pb, lb) = (OutPtr::new(a), a.len(), OutPtr::new(b), b.len());
    parallel_for(tasks, |i| {
        // SAFETY: as in `parallel_chunks_mut`, for each slice.
        let (ca, cb) = unsafe {
            (
                std::slice::from_raw_parts_mut(pa.get().add(i * a_chunk), a_chunk.min(la - i * a_chunk)),
                std::slice::from_raw_parts_mut(pb.get().add(i * b_chunk), b_chunk.min(lb - i * b_chunk)),
            )
        };
        f(i, ca, cb)
    })
}

/// Output pointer shared by tasks that write disjoint parts of one buffer: each element has one
/// writer, and the call that hands the pointer out returns only after every task is done.
pub(crate) struct OutPtr<T = f32>(*mut T);

impl<T> OutPtr<T> {
    pub(crate) fn new(out: &mut [T]) -> Self {
        OutPtr(out.as_mut_ptr())
    }

    /// The pointer; a method, so that closures capture the wrapper (Sync), not its raw field.
    #[inline(always)]
    pub(crate) fn get(self) -> *mut T {
        self.0
    }

    /// The pointer `n` elements on, shared by the same rule (a sub-buffer's writers).
    #[inline(always)]
    pub(crate) fn offset(self, n: usize) -> Self {
        OutPtr(self.0.wrapping_add(n))
    }
}

impl<T> Clone for OutPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for OutPtr<T> {}
// SAFETY: the tasks write disjoint elements (see above), which is sending each to one thread.
unsafe impl<T: Send> Send for OutPtr<T> {}
unsafe impl<T: Send> Sync for OutPtr<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_for_any_count_and_pool_size() {
        for threads in [1, 2, 3, 5] {
            let pool = ThreadPool::new(threads).unwrap();
            for tasks in [0, 1, 2, 3, 7, 64, 1000] {
                let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                pool.run(tasks, &|i| {
                    hits[i].fetch_add(1, Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "{threads} threads, {tasks} tasks");
            }
        }
    }

    #[test]
    fn chunks_cover_the_slice_and_nested_calls_run_serially() {
        let pool = ThreadPool::new(3).unwrap();
        let mut v = vec![0usize; 1001];
        pool.install(|| {
            parallel_chunks_mut(&mut v, 64, |c, chunk| {
                assert_eq!(current_threads(), 1);
                parallel_for(chunk.len(), |_| {}); // nested: serial, no deadlock
                for (j, x) in chunk.iter_mut().enumerate() {
                    *x = c * 64 + j;
                }
            })
        });
        assert!(v.iter().enumerate().all(|(i, &x)| i == x));
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_pool_keeps_working() {
        let pool = ThreadPool::new(3).unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(16, &|i| {
                if i == 11 {
                    panic!("task {i} failed");
                }
            })
        }));
        let msg = caught.unwrap_err().downcast::<String>().unwrap();
        assert_eq!(*msg, "task 11 failed");
        let total = AtomicUsize::new(0);
        pool.run(16, &|_| {
            total.fetch_add(1, Relaxed);
        });
        assert_eq!(total.load(Relaxed), 16);
    }

    #[test]
    fn install_runs_on_the_leader_returns_its_value_and_reraises_its_panic() {
        let pool = ThreadPool::new(2).unwrap();
        let me = std::thread::current().id();
        let (id, nested) = pool.install(|| (std::thread::current().id(), pool.install(|| std::thread::current().id())));
        assert_ne!(id, me);
        assert_eq!(nested, id, "a nested install runs in place");
        assert_eq!(pool.install(|| pool.install(|| current_threads())), 2);
        let from_tasks = AtomicUsize::new(0);
        pool.install(|| {
            parallel_for(8, |_| {
                from_tasks.fetch_add(pool.install(|| 1), Relaxed); // in place, no deadlock
            })
        });
        assert_eq!(from_tasks.load(Relaxed), 8);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.install(|| panic!("in the leader"))));
        assert_eq!(*caught.unwrap_err().downcast::<&str>().unwrap(), "in the leader");
        assert_eq!(pool.install(|| 7), 7, "the leader survives a panicking job");
    }

    #[test]
    fn workers_wake_after_parking_and_several_callers_take_turns() {
        let pool = Arc::new(ThreadPool::new(2).unwrap());
        std::thread::sleep(SPIN * 3); // the worker parks
        let total = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..3 {
                sc.spawn(|| {
                    for _ in 0..200 {
                        pool.run(4, &|_| {
                            total.fetch_add(1, Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Relaxed), 3 * 200 * 4);
    }
}
