//! Plain Rust loops compiled for the widest vector extension of the CPU they run on.
//!
//! The workspace builds for the baseline of its target (SSE2 on x86-64), so plain loops over
//! `f32` rows are vectorised four lanes wide. [`widest!`] defines a function that calls an
//! `#[inline(always)]` one through copies of itself compiled with AVX-512 or AVX2 enabled,
//! chosen when it runs by the CPU's features; the loops inlined into a copy are vectorised
//! 16 or 8 lanes wide. Rust never contracts a multiply and an add into an FMA, and never
//! reorders a float sum, so every copy computes the same bits: only the speed depends on the
//! CPU.
//!
//! ```
//! /// `sum_i a_i b_i`, in index order.
//! #[inline(always)]
//! fn dot(a: &[f32], b: &[f32]) -> f32 {
//!     a.iter().zip(b).map(|(x, y)| x * y).sum()
//! }
//!
//! sae_simd::widest! {
//!     /// [`dot`] on the CPU's widest vectors.
//!     fn dot_widest(a: &[f32], b: &[f32]) -> f32 = dot;
//! }
//!
//! let (a, b) = ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]);
//! assert_eq!(dot_widest(&a, &b).to_bits(), dot(&a, &b).to_bits());
//! ```

use std::cell::Cell;

/// A vector extension a copy of [`widest!`] is compiled for, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The build's target baseline (SSE2 on x86-64).
    Baseline,
    /// AVX2 (x86-64).
    Avx2,
    /// AVX-512F (x86-64).
    Avx512,
}

impl Level {
    /// Every level, narrowest first.
    pub const ALL: [Level; 3] = [Level::Baseline, Level::Avx2, Level::Avx512];

    /// The widest level this CPU runs.
    pub fn detected() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Level::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Level::Avx2;
            }
        }
        Level::Baseline
    }
}

thread_local! {
    static CAP: Cell<Level> = const { Cell::new(Level::Avx512) };
}

/// Runs `body` with the functions of [`widest!`] called on this thread using no level above
/// `cap`: how tests compare every copy this CPU runs with the baseline's.
pub fn capped<R>(cap: Level, body: impl FnOnce() -> R) -> R {
    /// Puts the cap back when `body` returns or unwinds.
    struct Restore(Level);
    impl Drop for Restore {
        fn drop(&mut self) {
            CAP.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CAP.with(|c| c.replace(cap)));
    body()
}

/// The level the functions of [`widest!`] run at on this thread: the CPU's widest, or less
/// under [`capped`].
pub fn level() -> Level {
    Level::detected().min(CAP.with(Cell::get))
}

/// `widest! { fn name(arg: Type, ...) -> Ret = inner; }` defines `name`, which calls
/// `inner(arg, ...)` compiled for the widest vector extension this CPU has (AVX-512F, else
/// AVX2, else the build's baseline; see [`level`]). `inner` must be `#[inline(always)]`, and so
/// must the functions its loops call, or they keep the baseline's code. Arguments may borrow;
/// their lifetimes are elided.
#[macro_export]
macro_rules! widest {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty = $inner:path;) => {
        $(#[$meta])*
        #[allow(unsafe_code)]
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) -> $ret {
                    $inner($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) -> $ret {
                    $inner($($arg),*)
                }
                match $crate::level() {
                    // SAFETY: `level` is at most the CPU's detected level, so the CPU has
                    // AVX-512F.
                    $crate::Level::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above, for AVX2.
                    $crate::Level::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::Level::Baseline => {}
                }
            }
            $inner($($arg),*)
        }
    };
}

/// Bytes per cache line assumed by [`prefetch`].
const CACHE_LINE: usize = 64;

/// Asks the CPU to start loading every cache line of `data` into its caches, for a read
/// soon after. A hint only: it changes no value, and does nothing on targets other than
/// x86-64. Loops that gather rows by an index known ahead (the rows of a shuffled batch)
/// call it a few rows early, so the loads overlap the work on the rows before.
///
/// ```
/// let rows = vec![0.5f32; 4 * 384];
/// // Row 2's cache lines start loading; any slice will do, an empty one too.
/// sae_simd::prefetch(&rows[2 * 384..3 * 384]);
/// sae_simd::prefetch::<f32>(&[]);
/// assert!(rows.iter().all(|&x| x == 0.5));
/// ```
#[inline(always)]
pub fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let start = data.as_ptr().cast::<i8>();
        for offset in (0..std::mem::size_of_val(data)).step_by(CACHE_LINE) {
            // SAFETY: a prefetch reads nothing a program can observe and never faults, and
            // the address is inside `data`.
            #[allow(unsafe_code)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}
