//! Wait/notify on a shared 32-bit event word: spin briefly, then sleep in bounded slices.
//!
//! This module owns the sleep/wake half of the ring protocol (DESIGN §2, `signal`):
//!
//! - [`WaitWord`] is the sleep/wake primitive, taken as a parameter so that one wait algorithm
//!   runs on a Linux futex ([`Futex`]), on a portable sleep-poll fallback ([`SleepPoll`]) and
//!   inside a `loom` model (`LoomFutex`);
//! - [`announce_sleep`] and [`notify`] implement the event-word protocol that lets the side
//!   making progress skip the wake syscall unless the other side announced that it sleeps;
//! - `wait_until` is the generic blocking loop the ring uses: spin, then announce, re-check,
//!   check the peer's liveness, and sleep at most [`WaitStrategy::poll_interval`] at a time.
//!
//! # The event-word protocol
//!
//! Bit 0 of an event word means "a sleeper announced itself"; the remaining bits count
//! notifications in steps of 2, so every notification that clears the bit also changes the
//! word. One side sleeps on a word (the consumer on `data_event`, the producer on
//! `space_event`) and the other side notifies it.
//!
//! ```text
//! sleeper                                   notifier
//! S1  expected = word.fetch_or(1) | 1       N1  publish position (Release store)
//! S2  fence(SeqCst)                         N2  fence(SeqCst)
//! S3  re-check the condition (Acquire)      N3  if word.load() & 1 != 0 {
//! S4  if not ready: wait(word, expected)          word.fetch_add(1); wake(word) }
//! ```
//!
//! Why no wake-up is lost (the store-buffering / Dekker argument): the two `SeqCst` fences are
//! totally ordered. If S2 precedes N2, then N3 observes S1's bit (the fence order makes S1
//! visible to every load after N2), so the notifier bumps the word and wakes: either the
//! sleeper is already asleep on `expected` and is woken, or it has not entered the kernel yet
//! and the futex `wait` returns at once because the word no longer equals `expected`. If N2
//! precedes S2, then S3 observes N1's publication and the sleeper does not sleep at all. In
//! both orders the sleeper learns about the new position; the notifier pays for a wake syscall
//! only when a sleeper announced itself. A sleeper that finds its condition ready after
//! announcing withdraws its bit with a compare-exchange that fails harmlessly if a notifier
//! already bumped the word (at worst one spare wake syscall follows).
//!
//! Sleeps are sliced by [`WaitStrategy::poll_interval`] so that a peer that died (and will
//! never notify) is noticed by a [`PeerCheck`] between slices.
#![deny(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sync::{fence, AtomicU32, Ordering};

/// Sleep/wake primitive on a shared `u32` word, with futex semantics.
///
/// `wait` returns at once if the word does not equal `expected`, returns after at most
/// `timeout` (when given) and may return spuriously; `wake` wakes every sleeper on the word.
pub trait WaitWord: Send + Sync + 'static {
    /// Sleeps while `word == expected`, for at most `timeout` if given.
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>);
    /// Wakes every thread (in any process) sleeping on `word`.
    fn wake(&self, word: &AtomicU32);
}

/// The Linux futex (shared, never `FUTEX_PRIVATE`), through `crate::sys`.
#[cfg(all(target_os = "linux", not(loom)))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Futex;

#[cfg(all(target_os = "linux", not(loom)))]
impl WaitWord for Futex {
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        crate::sys::futex_wait(word, expected, timeout);
    }

    fn wake(&self, word: &AtomicU32) {
        crate::sys::futex_wake(word);
    }
}

/// Portable fallback: no kernel sleep queue, just short sleeps.
///
/// `wait` returns at once if the word changed, and otherwise sleeps
/// `min(timeout, 200 µs)`; `wake` does nothing. Wake-up latency is therefore up to 200 µs.
#[cfg(not(loom))]
#[derive(Clone, Copy, Debug, Default)]
pub struct SleepPoll;

#[cfg(not(loom))]
impl SleepPoll {
    /// Longest single sleep.
    pub const MAX_SLEEP: Duration = Duration::from_micros(200);
}

#[cfg(not(loom))]
impl WaitWord for SleepPoll {
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        if word.load(Ordering::Acquire) != expected {
            return;
        }
        let slice = timeout.map_or(Self::MAX_SLEEP, |t| t.min(Self::MAX_SLEEP));
        std::thread::sleep(slice);
    }

    fn wake(&self, _word: &AtomicU32) {}
}

/// A model of a futex for `loom`: a mutex and a condition variable.
///
/// Timeouts are ignored, so in a loom model every wait is unbounded and a lost wake-up shows
/// up as a deadlock reported by loom.
#[cfg(loom)]
#[derive(Debug, Default)]
pub struct LoomFutex {
    lock: loom::sync::Mutex<()>,
    condvar: loom::sync::Condvar,
}

#[cfg(loom)]
impl LoomFutex {
    /// A futex model with nobody waiting.
    pub fn new() -> LoomFutex {
        LoomFutex::default()
    }
}

#[cfg(loom)]
impl WaitWord for LoomFutex {
    fn wait(&self, word: &AtomicU32, expected: u32, _timeout: Option<Duration>) {
        let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if word.load(Ordering::SeqCst) == expected {
            // The result only hands the guard back; a poisoned lock cannot matter here.
            drop(self.condvar.wait(guard));
        }
    }

    fn wake(&self, _word: &AtomicU32) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.condvar.notify_all();
    }
}

/// The platform's best [`WaitWord`]: [`Futex`] on Linux, [`SleepPoll`] elsewhere.
#[cfg(not(loom))]
pub fn default_wait_word() -> Arc<dyn WaitWord> {
    #[cfg(target_os = "linux")]
    {
        Arc::new(Futex)
    }
    #[cfg(not(target_os = "linux"))]
    {
        Arc::new(SleepPoll)
    }
}

/// Announces that the caller is about to sleep on `word`, and returns the value to pass to
/// [`WaitWord::wait`].
///
/// Includes the `SeqCst` fence of the protocol (step S2 in the module docs): after this call
/// the caller must re-check its condition and sleep only if it still does not hold.
#[inline]
pub fn announce_sleep(word: &AtomicU32) -> u32 {
    let expected = word.fetch_or(1, Ordering::SeqCst) | 1;
    fence(Ordering::SeqCst);
    expected
}

/// Withdraws an announcement made by [`announce_sleep`] whose caller did not sleep after all.
///
/// Fails harmlessly (leaving the word alone) if a notifier has already bumped the word.
#[inline]
fn cancel_sleep(word: &AtomicU32, expected: u32) {
    let _ = word.compare_exchange(
        expected,
        expected & !1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
}

/// Tells a sleeper on `word` that the caller published progress; makes the wake call only if
/// a sleeper announced itself.
///
/// Call it after the Release store that publishes the new position (step N1 in the module
/// docs).
#[inline]
pub fn notify(word: &AtomicU32, waiter: &dyn WaitWord) {
    fence(Ordering::SeqCst);
    if word.load(Ordering::Relaxed) & 1 != 0 {
        // Clears bit 0 and bumps the count, so a sleeper about to wait on `expected` returns.
        // SYNC: pairs with nothing on purpose: no data travels through the event word; the
        // woken sleeper re-checks the position with its own Acquire load (and the fences above
        // and in `announce_sleep` order the two sides). Release only keeps the bump after the
        // publication in every model.
        word.fetch_add(1, Ordering::Release);
        waiter.wake(word);
    }
}

/// How a blocking call waits: spin first, then sleep in slices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WaitStrategy {
    /// How long to busy-poll before sleeping (default 50 µs). Zero sleeps at once.
    pub spin: Duration,
    /// The longest single sleep, and the interval between peer-liveness checks while asleep
    /// (default 10 ms). Should be non-zero.
    pub poll_interval: Duration,
}

/// Setters, one per field (the struct is `#[non_exhaustive]`: build it from `default()`).
impl WaitStrategy {
    /// Sets [`WaitStrategy::spin`].
    #[must_use]
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// Sets [`WaitStrategy::poll_interval`].
    #[must_use]
    pub fn poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval;
        self
    }
}

impl WaitStrategy {
    /// Default [`WaitStrategy::spin`].
    pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);
    /// Default [`WaitStrategy::poll_interval`].
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(10);
}

impl Default for WaitStrategy {
    fn default() -> WaitStrategy {
        WaitStrategy {
            spin: Self::DEFAULT_SPIN,
            poll_interval: Self::DEFAULT_POLL_INTERVAL,
        }
    }
}

/// Why a peer can no longer take part; returned by a [`PeerCheck`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerLost {
    /// The peer's process died without detaching (its OS lock is gone).
    #[error("peer process {pid} died")]
    Dead {
        /// Pid the peer registered when it attached.
        pid: u32,
    },
    /// The peer detached cleanly.
    #[error("peer detached")]
    Closed,
}

/// Asked between sleep slices whether the peer is still there.
pub trait PeerCheck: Send + Sync + 'static {
    /// `Ok(())` while the peer can still make progress.
    fn check(&self) -> Result<(), PeerLost>;
}

/// A [`PeerCheck`] that always answers `Ok` (in-process tests, loom).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPeerCheck;

impl PeerCheck for NoPeerCheck {
    fn check(&self) -> Result<(), PeerLost> {
        Ok(())
    }
}

/// Everything a blocking ring call needs to wait.
#[derive(Clone)]
pub struct Signals {
    /// The sleep/wake primitive.
    pub waiter: Arc<dyn WaitWord>,
    /// Asked between sleep slices whether the peer is alive.
    pub peer: Arc<dyn PeerCheck>,
    /// Spin time and sleep slice.
    pub strategy: WaitStrategy,
}

impl Signals {
    /// Signals for two halves in one process: the platform's [`WaitWord`] (`LoomFutex` under
    /// loom), [`NoPeerCheck`] and the default [`WaitStrategy`].
    pub fn in_process() -> Signals {
        #[cfg(not(loom))]
        let waiter = default_wait_word();
        #[cfg(loom)]
        let waiter: Arc<dyn WaitWord> = Arc::new(LoomFutex::new());
        Signals {
            waiter,
            peer: Arc::new(NoPeerCheck),
            strategy: WaitStrategy::default(),
        }
    }
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signals")
            .field("strategy", &self.strategy)
            .finish_non_exhaustive()
    }
}

/// Iterations of the spin loop between two reads of the clock.
#[cfg(not(loom))]
const SPIN_CLOCK_EVERY: u32 = 64;

/// Waits until `ready` yields a value, the peer is lost, or `deadline` passes.
///
/// `ready` is called repeatedly; it returns `Ok(Some(v))` when the awaited condition holds,
/// `Ok(None)` when it does not yet, and `Err` to abort. `word` is the event word the other
/// side [`notify`]s after making progress. Returns `Ok(None)` once `deadline` has passed
/// (never without calling `ready` at least once after announcing the sleep).
///
/// Phases: spin for [`WaitStrategy::spin`] (reading the clock only every 64 iterations), then
/// loop { announce, re-check, check the peer, sleep at most `poll_interval` or until the
/// deadline }. The peer is checked when sleeping starts and then at most once per
/// `poll_interval`, so what the peer left behind is drained before its loss is reported.
///
/// Under loom there is no spinning and no clock: `deadline` must be `None`.
pub(crate) fn wait_until<T, E: From<PeerLost>>(
    word: &AtomicU32,
    signals: &Signals,
    deadline: Option<Instant>,
    mut ready: impl FnMut() -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    let strategy = signals.strategy;

    #[cfg(not(loom))]
    if !strategy.spin.is_zero() {
        let start = Instant::now();
        let spin_end = match deadline {
            Some(d) => d.min(start + strategy.spin),
            None => start + strategy.spin,
        };
        let mut iterations: u32 = 0;
        loop {
            if let Some(value) = ready()? {
                return Ok(Some(value));
            }
            iterations = iterations.wrapping_add(1);
            if iterations.is_multiple_of(SPIN_CLOCK_EVERY) && Instant::now() >= spin_end {
                break;
            }
            core::hint::spin_loop();
        }
    }

    // The first peer check comes one poll interval after sleeping starts: a peer that is
    // merely slow costs no extra system call per message, and a dead one is still reported
    // within `poll_interval` (plus one sleep slice).
    #[cfg(not(loom))]
    let mut last_peer_check = Instant::now();
    loop {
        let expected = announce_sleep(word);
        if let Some(value) = ready()? {
            cancel_sleep(word, expected);
            return Ok(Some(value));
        }

        #[cfg(not(loom))]
        let now = Instant::now();
        #[cfg(not(loom))]
        let due = now.duration_since(last_peer_check) >= strategy.poll_interval;
        #[cfg(loom)]
        let due = true;
        if due {
            #[cfg(not(loom))]
            {
                last_peer_check = now;
            }
            if let Err(lost) = signals.peer.check() {
                // A peer that published a last record and then left: its Release store of
                // the ring position precedes its Release store of the state the check read,
                // so one more look finds the record. Deliver it; report the loss next time.
                let last = ready()?;
                cancel_sleep(word, expected);
                return match last {
                    Some(value) => Ok(Some(value)),
                    None => Err(lost.into()),
                };
            }
        }

        let slice = match deadline {
            None => strategy.poll_interval,
            Some(deadline) => {
                #[cfg(loom)]
                let now = Instant::now();
                if now >= deadline {
                    cancel_sleep(word, expected);
                    return Ok(None);
                }
                strategy.poll_interval.min(deadline - now)
            }
        };
        signals.waiter.wait(word, expected, Some(slice));
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::thread;

    #[test]
    fn notify_without_sleeper_leaves_word_alone() {
        let word = AtomicU32::new(0);
        notify(&word, &SleepPoll);
        assert_eq!(word.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn announce_then_notify_changes_word_and_clears_bit() {
        let word = AtomicU32::new(0);
        let expected = announce_sleep(&word);
        assert_eq!(expected, 1);
        notify(&word, &SleepPoll);
        let now = word.load(Ordering::Relaxed);
        assert_ne!(now, expected);
        assert_eq!(now & 1, 0);
        // A second announcement yields a new expected value.
        assert_eq!(announce_sleep(&word), now | 1);
    }

    #[test]
    fn cancel_sleep_withdraws_only_an_unanswered_announcement() {
        let word = AtomicU32::new(4);
        let expected = announce_sleep(&word);
        cancel_sleep(&word, expected);
        assert_eq!(word.load(Ordering::Relaxed), 4);
        let expected = announce_sleep(&word);
        notify(&word, &SleepPoll);
        let after_notify = word.load(Ordering::Relaxed);
        cancel_sleep(&word, expected);
        assert_eq!(word.load(Ordering::Relaxed), after_notify);
    }

    #[test]
    fn sleep_poll_returns_at_once_when_word_differs() {
        let word = AtomicU32::new(3);
        // Would sleep forever-ish (capped at 200 µs) only if the word matched.
        SleepPoll.wait(&word, 5, None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn futex_wait_returns_on_mismatch_and_on_timeout() {
        let word = AtomicU32::new(3);
        Futex.wait(&word, 5, None);
        Futex.wait(&word, 3, Some(Duration::from_millis(1)));
    }

    fn wake_across_threads(waiter: Arc<dyn WaitWord>) {
        let word = Arc::new(AtomicU32::new(0));
        let flag = Arc::new(AtomicBool::new(false));
        let signals = Signals {
            waiter: waiter.clone(),
            peer: Arc::new(NoPeerCheck),
            strategy: WaitStrategy {
                spin: Duration::ZERO,
                poll_interval: Duration::from_secs(30),
            },
        };
        let sleeper = {
            let word = word.clone();
            let flag = flag.clone();
            thread::spawn(move || {
                wait_until::<(), PeerLost>(&word, &signals, None, || {
                    Ok(flag.load(Ordering::Acquire).then_some(()))
                })
            })
        };
        thread::sleep(Duration::from_millis(20));
        flag.store(true, Ordering::Release);
        notify(&word, &*waiter);
        assert_eq!(sleeper.join().unwrap(), Ok(Some(())));
    }

    #[test]
    fn wait_until_wakes_on_notify_default_waiter() {
        wake_across_threads(default_wait_word());
    }

    #[test]
    fn wait_until_wakes_on_notify_sleep_poll() {
        wake_across_threads(Arc::new(SleepPoll));
    }

    #[test]
    fn wait_until_times_out() {
        let word = AtomicU32::new(0);
        let signals = Signals::in_process();
        let start = Instant::now();
        let deadline = start + Duration::from_millis(30);
        let got = wait_until::<(), PeerLost>(&word, &signals, Some(deadline), || Ok(None));
        assert_eq!(got, Ok(None));
        assert!(Instant::now() >= deadline);
    }

    struct DeadPeer;
    impl PeerCheck for DeadPeer {
        fn check(&self) -> Result<(), PeerLost> {
            Err(PeerLost::Dead { pid: 42 })
        }
    }

    #[test]
    fn wait_until_reports_lost_peer_but_prefers_ready_value() {
        let word = AtomicU32::new(0);
        let signals = Signals {
            peer: Arc::new(DeadPeer),
            ..Signals::in_process()
        };
        let got = wait_until::<(), PeerLost>(&word, &signals, None, || Ok(None));
        assert_eq!(got, Err(PeerLost::Dead { pid: 42 }));
        let got = wait_until::<u8, PeerLost>(&word, &signals, None, || Ok(Some(7)));
        assert_eq!(got, Ok(Some(7)));
    }

    #[test]
    fn wait_strategy_defaults() {
        let s = WaitStrategy::default();
        assert_eq!(s.spin, Duration::from_micros(50));
        assert_eq!(s.poll_interval, Duration::from_millis(10));
    }
}
