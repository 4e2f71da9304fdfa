//! Per-thread buffers reused across kernel calls (quantized activations, rearranged rows), so a
//! decode step in steady state allocates nothing: each buffer grows to the largest call once.
use std::cell::Cell;
use std::thread::LocalKey;

/// Runs `f` on `len` elements of this thread's buffer in `slot` (contents unspecified: callers
/// overwrite them). A nested call on the same slot gets a fresh buffer instead of aliasing.
pub(crate) fn with_buffer<T: Copy, R>(slot: &'static LocalKey<Cell<Vec<T>>>, len: usize, fill: T, f: impl FnOnce(&mut [T]) -> R) -> R {
    slot.with(|cell| {
        let mut buf = cell.take();
        if buf.len() < len {
            buf.resize(len, fill);
        }
        let r = f(&mut buf[..len]);
        cell.set(buf);
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static SLOT: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    }

    #[test]
    fn buffers_are_reused_and_nested_calls_do_not_alias() {
        let first = with_buffer(&SLOT, 8, 0, |b| {
            b.fill(1);
            with_buffer(&SLOT, 4, 7, |inner| assert_eq!(inner, &[7; 4])); // fresh, not `b`
            b.as_ptr() as usize
        });
        let again = with_buffer(&SLOT, 4, 0, |b| {
            assert_eq!(b, &[1; 4]); // same storage, contents left as they were
            b.as_ptr() as usize
        });
        assert_eq!(first, again);
    }
}
