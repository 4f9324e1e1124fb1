//! Coarse per-worker deadlines for the per-request timeouts (header read, response).
//!
//! tokio's timer registers every `Sleep` in the runtime's timer wheel and takes it out again,
//! which on a 1 KiB keep-alive request costs about as much as the rest of the worker's
//! bookkeeping: a request would arm two of them (hyper's header-read timeout and the
//! response timeout) and almost never see one fire. As nginx does with its event timers,
//! a deadline here is an entry in a per-worker table that a single ticker task checks; arming
//! and disarming one is a slab insert and remove under an uncontended lock. The ticker sleeps
//! until the earliest deadline, never for less than the resolution, so a deadline fires up
//! to one resolution late, never early, and an idle worker sleeps.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;
use tokio::sync::Notify;

/// How late a deadline may fire; also the shortest sleep of the ticker.
pub const RESOLUTION: Duration = Duration::from_millis(20);

/// A worker's deadline table, cheap to clone. Usable as hyper's [`hyper::rt::Timer`].
#[derive(Clone)]
pub struct Deadlines {
    shared: Arc<Shared>,
}

struct Shared {
    table: Mutex<Table>,
    /// Wakes the ticker when a deadline earlier than its planned wake-up is armed.
    replan: Notify,
}

struct Table {
    entries: Slab<Entry>,
    /// When the ticker will next look; `None` while it waits for a first entry.
    next_tick: Option<Instant>,
}

struct Entry {
    deadline: Instant,
    waker: Option<Waker>,
    fired: bool,
}

impl Deadlines {
    /// A table and the ticker that fires its deadlines; spawn the ticker on the runtime of
    /// the tasks that use the table. Deadlines stop firing when the ticker is dropped.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> (Self, impl Future<Output = ()> + Send + 'static) {
        let shared = Arc::new(Shared {
            table: Mutex::new(Table {
                entries: Slab::new(),
                next_tick: None,
            }),
            replan: Notify::new(),
        });
        let ticker = tick(shared.clone());
        (Self { shared }, ticker)
    }

    /// A deadline at `deadline`, armed when first polled.
    pub fn sleep_until(&self, deadline: Instant) -> Deadline {
        Deadline {
            shared: self.shared.clone(),
            deadline,
            key: None,
        }
    }

    /// Runs `fut` until it completes or `deadline` has passed, whichever is first.
    pub fn timeout_at<F: Future>(&self, deadline: Instant, fut: F) -> Timeout<F> {
        Timeout {
            fut,
            deadline: self.sleep_until(deadline),
        }
    }

    /// Armed deadlines.
    #[cfg(test)]
    fn armed(&self) -> usize {
        self.shared.lock().entries.len()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves the table consistent (every operation on it
        // is a single slab call), so a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Fires due deadlines, then sleeps until the earliest remaining one (at least
/// [`RESOLUTION`]), or until an entry arrives in an empty table. Runs until dropped with
/// its runtime.
async fn tick(shared: Arc<Shared>) {
    loop {
        let now = now();
        let wake_at = {
            let mut table = shared.lock();
            let mut earliest: Option<Instant> = None;
            for (_, e) in table.entries.iter_mut() {
                if e.fired {
                    continue;
                }
                if e.deadline <= now {
                    e.fired = true;
                    if let Some(w) = e.waker.take() {
                        w.wake();
                    }
                } else {
                    earliest = Some(earliest.map_or(e.deadline, |x| x.min(e.deadline)));
                }
            }
            let wake_at = earliest.map(|d| d.max(now + RESOLUTION));
            table.next_tick = wake_at;
            wake_at
        };
        // An entry armed from here on finds the new plan and, if it is earlier, leaves a
        // permit that ends the wait below at once: no replan request is lost.
        let replan = shared.replan.notified();
        match wake_at {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = replan => {}
                }
            }
            None => replan.await,
        }
    }
}

/// The clock deadlines are measured on: tokio's, so that tests can pause it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// One deadline; completes once the ticker has seen it pass. Disarmed when dropped.
pub struct Deadline {
    shared: Arc<Shared>,
    deadline: Instant,
    key: Option<usize>,
}

impl Deadline {
    /// Moves the deadline (re-armed on the next poll).
    pub fn reset(&mut self, deadline: Instant) {
        self.disarm();
        self.deadline = deadline;
    }

    fn disarm(&mut self) {
        if let Some(key) = self.key.take() {
            self.shared.lock().entries.try_remove(key);
        }
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut table = this.shared.lock();
        match this.key {
            Some(key) => {
                let e = &mut table.entries[key];
                if e.fired {
                    return Poll::Ready(());
                }
                match &mut e.waker {
                    Some(w) => w.clone_from(cx.waker()),
                    None => e.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            None => {
                // No clock reading here: a deadline already due is armed like any other,
                // and being earliest, it makes the ticker run and fire it at once.
                this.key = Some(table.entries.insert(Entry {
                    deadline: this.deadline,
                    waker: Some(cx.waker().clone()),
                    fired: false,
                }));
                // Wake the ticker only when this deadline is earlier than its plan; with one
                // timeout per kind, deadlines mostly arrive in order and that is rare.
                let replan = table.next_tick.is_none_or(|t| this.deadline < t);
                if replan {
                    table.next_tick = Some(this.deadline);
                    drop(table);
                    this.shared.replan.notify_one();
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// The error of a [`Timeout`] whose deadline passed first.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

/// A future bounded by a [`Deadline`].
pub struct Timeout<F> {
    fut: F,
    deadline: Deadline,
}

impl<F: Future + Unpin> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(out) = Pin::new(&mut self.fut).poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match Pin::new(&mut self.deadline).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Sleep for Deadline {}

impl hyper::rt::Timer for Deadlines {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadlines::sleep_until(self, now() + duration))
    }

    fn now(&self) -> Instant {
        now()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadlines::sleep_until(self, deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<Deadline>() {
            // Deadline is Unpin.
            Some(mut d) => d.reset(new_deadline),
            None => *sleep = hyper::rt::Timer::sleep_until(self, new_deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    /// Polls once; true when ready.
    async fn ready<F: Future + Unpin>(f: &mut F) -> bool {
        poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx).is_ready())).await
    }

    /// A table with its ticker running, and the (paused) time it starts at.
    fn started() -> (Deadlines, Instant) {
        let (d, ticker) = Deadlines::new();
        tokio::spawn(ticker);
        (d, now())
    }

    /// Lets the ticker run at the current (paused) time.
    async fn settle() {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fires_after_its_deadline_never_before() {
        let (d, start) = started();
        let mut a = d.sleep_until(start + Duration::from_millis(300));
        assert!(!ready(&mut a).await);
        assert_eq!(d.armed(), 1);

        tokio::time::advance(Duration::from_millis(299)).await;
        settle().await;
        assert!(!ready(&mut a).await, "fired early");

        tokio::time::advance(RESOLUTION).await;
        settle().await;
        assert!(
            ready(&mut a).await,
            "not fired one resolution after its deadline"
        );
        drop(a);
        assert_eq!(d.armed(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_replans_the_ticker() {
        let (d, start) = started();
        let mut late = d.sleep_until(start + Duration::from_secs(30));
        assert!(!ready(&mut late).await);
        settle().await;
        // The ticker now sleeps until +30 s; an entry due at +100 ms must wake it sooner.
        let mut early = d.sleep_until(start + Duration::from_millis(100));
        assert!(!ready(&mut early).await);
        tokio::time::advance(Duration::from_millis(100) + RESOLUTION).await;
        settle().await;
        assert!(ready(&mut early).await);
        assert!(!ready(&mut late).await);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_and_reset_deadlines_leave_the_table() {
        let (d, start) = started();
        let mut a = d.sleep_until(start + Duration::from_millis(50));
        let mut b = d.sleep_until(start + Duration::from_millis(50));
        assert!(!ready(&mut a).await && !ready(&mut b).await);
        assert_eq!(d.armed(), 2);
        drop(a);
        assert_eq!(d.armed(), 1);
        // Moved later: disarmed now, re-armed on the next poll, and not fired at +50 ms.
        b.reset(start + Duration::from_secs(1));
        assert_eq!(d.armed(), 0);
        assert!(!ready(&mut b).await);
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
        assert!(!ready(&mut b).await);
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert!(ready(&mut b).await);
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_bounds_a_future() {
        let (d, _) = started();
        let quick = d.timeout_at(now() + Duration::from_secs(1), Box::pin(async { 7 }));
        assert_eq!(quick.await, Ok(7));
        let slow = d.timeout_at(
            now() + Duration::from_millis(200),
            Box::pin(std::future::pending::<()>()),
        );
        assert_eq!(slow.await, Err(Elapsed));
        assert_eq!(d.armed(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn hyper_reset_reuses_the_entry() {
        use hyper::rt::Timer;
        let (d, start) = started();
        let mut s = Timer::sleep_until(&d, start + Duration::from_millis(100));
        assert!(!ready(&mut s).await);
        d.reset(&mut s, start + Duration::from_millis(500));
        tokio::time::advance(Duration::from_millis(200)).await;
        settle().await;
        assert!(!ready(&mut s).await);
        tokio::time::advance(Duration::from_millis(300) + RESOLUTION).await;
        settle().await;
        assert!(ready(&mut s).await);
    }
}
