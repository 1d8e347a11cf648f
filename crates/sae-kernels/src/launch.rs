//! Launch helpers every kernel module shares: grids, cube shapes, kernel arguments over raw
//! buffers, filled and uninitialised buffers, and reading a buffer back.

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::KernelError;
use crate::key::{CUBE, cube_index};

pub(crate) fn read_error(e: impl std::fmt::Debug) -> KernelError {
    KernelError::Read {
        reason: format!("{e:?}"),
    }
}

/// An error unless `handle` holds at least `len` 4-byte elements (`what` names the buffer).
pub(crate) fn check_words(
    what: &'static str,
    handle: &Handle,
    len: usize,
) -> Result<(), KernelError> {
    let expected = len as u64 * 4;
    if handle.size_in_used() < expected {
        return Err(KernelError::BufferTooSmall {
            what,
            bytes: handle.size_in_used(),
            expected,
        });
    }
    Ok(())
}

/// Reads buffers of 4-byte words (u32 or f32 bits) back with one synchronisation.
pub(crate) fn read_words<R: Runtime>(
    client: &ComputeClient<R>,
    handles: Vec<Handle>,
) -> Result<Vec<Vec<u32>>, KernelError> {
    let bytes = cubecl::future::block_on(client.read_async(handles)).map_err(read_error)?;
    Ok(bytes.iter().map(|b| u32::from_bytes(b).to_vec()).collect())
}

pub(crate) fn read_u32<R: Runtime>(
    client: &ComputeClient<R>,
    handle: &Handle,
) -> Result<Vec<u32>, KernelError> {
    let bytes = client.read_one(handle.clone()).map_err(read_error)?;
    Ok(u32::from_bytes(&bytes).to_vec())
}

/// Whether the runtime of `client` reports plane (warp) operations.
pub(crate) fn reported_plane_ops<R: Runtime>(client: &ComputeClient<R>) -> bool {
    client
        .properties()
        .features
        .plane
        .contains(cubecl::features::Plane::Ops)
}

/// Chunks of `per_chunk` elements that `len` elements need in a resident kernel, rounded up
/// to a power of two so that few kernel variants are compiled.
pub(crate) fn resident_chunks(len: usize, per_chunk: u32) -> u32 {
    (len.div_ceil(per_chunk as usize).max(1) as u32).next_power_of_two()
}

/// A kernel argument over the first `len` elements of `handle`.
#[allow(unsafe_code)]
pub(crate) fn array<R: Runtime>(handle: &Handle, len: usize) -> ArrayArg<R> {
    // SAFETY (why `unsafe` is allowed here): cubecl cannot know the element count of a raw
    // buffer. Every caller passes the count the buffer was allocated with in this crate, or
    // that `DeviceScores::new` checked against the buffer's size.
    unsafe { ArrayArg::from_raw_parts(handle.clone(), len.max(1)) }
}

/// A grid of at least `cubes` cubes, split over two dimensions beyond the 65535 limit of one.
/// A cube's linear index is `CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X`; cubes at or past `cubes`
/// must do nothing.
pub fn grid(cubes: usize) -> CubeCount {
    const MAX: usize = 65_535;
    let cubes = cubes.max(1);
    let y = cubes.div_ceil(MAX);
    let x = cubes.div_ceil(y);
    CubeCount::Static(x as u32, y as u32, 1)
}

/// The cube shape of every kernel: `CUBE` units in one dimension.
pub(crate) fn unit_dim() -> CubeDim {
    CubeDim::new_1d(CUBE)
}

/// A device buffer of `len` u32 (at least one), filled with `value` on the device.
pub(crate) fn filled<R: Runtime>(client: &ComputeClient<R>, len: usize, value: u32) -> Handle {
    let len = len.max(1);
    let handle = client.empty(len * 4);
    fill::launch::<R>(
        client,
        grid(len.div_ceil(CUBE as usize)),
        unit_dim(),
        array(&handle, len),
        len as u32,
        value,
    );
    handle
}

/// A device buffer of `len` zeros (u32).
pub(crate) fn zeros<R: Runtime>(client: &ComputeClient<R>, len: usize) -> Handle {
    filled(client, len, 0)
}

/// An uninitialised device buffer of `len` 4-byte elements (at least one).
pub(crate) fn uninit<R: Runtime>(client: &ComputeClient<R>, len: usize) -> Handle {
    client.empty(len.max(1) * 4)
}

/// Sets the first `len` elements of `out` to `value`.
#[cube(launch)]
pub(crate) fn fill(out: &mut Array<u32>, len: u32, value: u32) {
    let i = cube_index() * CUBE as usize + UNIT_POS as usize;
    if i < len as usize {
        out[i] = value;
    }
}
