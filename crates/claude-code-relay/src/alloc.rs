//! The global allocator: mimalloc, asked for a plain block whenever one is aligned enough.
//!
//! `mimalloc::MiMalloc` asks for every block through mimalloc's aligned entry points, which
//! test the alignment, look for a block that happens to be aligned and, for blocks over
//! 1 KiB or when the page has none free, go round by a generic path before the plain
//! allocation they end in. Nearly every block the relay asks for needs no more than what a
//! plain `mi_malloc` gives anyway: on x86_64 and aarch64, mimalloc rounds blocks over one
//! word to two words (16 bytes), so a block is aligned to 16 bytes or to its size if smaller
//! (the rule `std`'s own `System` allocator applies to `malloc`). Only larger alignments (a
//! tokio task's cache-padded header, say) take the aligned path.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The largest alignment every plain mimalloc block of at least that size has.
const PLAIN_ALIGN: usize = 16;

pub struct RelayAllocator;

fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free` takes blocks from
// either entry point); a plain block is only handed out where `plain` holds, where mimalloc's
// size classes guarantee the layout's alignment, and the aligned entry points are used
// otherwise.
unsafe impl GlobalAlloc for RelayAllocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            unsafe { mi::mi_malloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            unsafe { mi::mi_zalloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            unsafe { mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8 }
        } else {
            unsafe {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_alignment_their_layout_asks_for() {
        let allocator = RelayAllocator;
        for size in [
            1usize, 2, 7, 8, 9, 15, 16, 17, 24, 33, 100, 1000, 1025, 5000, 70_000,
        ] {
            for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                // Many blocks of one size, so that blocks from the middle of a page are seen.
                let blocks: Vec<*mut u8> = (0..64)
                    .map(|_| unsafe { allocator.alloc(layout) })
                    .collect();
                for block in &blocks {
                    assert!(!block.is_null());
                    assert_eq!(*block as usize % align, 0, "size {size}, align {align}");
                }
                let grown = unsafe { allocator.realloc(blocks[0], layout, size * 3) };
                assert_eq!(
                    grown as usize % align,
                    0,
                    "grown: size {size}, align {align}"
                );
                let zeroed = unsafe { allocator.alloc_zeroed(layout) };
                assert_eq!(zeroed as usize % align, 0);
                assert!(unsafe { std::slice::from_raw_parts(zeroed, size) }
                    .iter()
                    .all(|byte| *byte == 0));
                unsafe {
                    allocator.dealloc(grown, Layout::from_size_align_unchecked(size * 3, align));
                    allocator.dealloc(zeroed, layout);
                    for block in &blocks[1..] {
                        allocator.dealloc(*block, layout);
                    }
                }
            }
        }
    }
}
