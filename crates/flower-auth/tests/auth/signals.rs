//! `SIGUSR1` is process-wide: raised by one test, it reloads every live
//! `AuthManager` listening for it, in every test of this binary. Tests that
//! raise it hold [`sigusr1_lock`] for their whole run, so that their managers
//! see only their own signals and their reload counts stay exact.

use tokio::sync::{Mutex, MutexGuard};

/// Serialises the tests that raise `SIGUSR1`.
pub(crate) async fn sigusr1_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

/// Raises `SIGUSR1` in this process. Only call it while holding
/// [`sigusr1_lock`] and with a manager listening for it alive (its handler
/// is installed), so the default action (terminate) never applies.
pub(crate) fn raise_sigusr1() {
    signal_hook::low_level::raise(signal_hook::consts::SIGUSR1).expect("raise SIGUSR1");
}
