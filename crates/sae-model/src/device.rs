//! Selection on the device for burn's cubecl backends, through the kernels of `sae-kernels`.
//!
//! Backend code in this crate is generic (`B: Backend`), and Rust has no specialisation, so
//! the device path is found at run time: the affinities' primitive is downcast to the tensor
//! types of the cubecl backends this crate is built with (`Wgpu`, and `Cuda` with the `cuda`
//! feature, each with or without burn's fusion layer). When it matches, the kernels run on the
//! tensor's own buffer and only the O(nnz) selection comes back to the host; otherwise the
//! caller falls back to the host rules.

use std::any::{Any, TypeId};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData, TensorPrimitive};
use burn_cubecl::fusion::FusionCubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, CubeRuntime};
use burn_fusion::stream::OperationStreams;
use burn_fusion::{FusionTensor, NoOp};
use burn_ir::{InitOperationIr, OperationIr};
use sae_alloc::Selection;
use sae_kernels::{DeviceScores, DeviceSelection, KernelError};

use crate::error::{Result, SaeError};
use crate::rule::{Activation, BuiltinRule};
use crate::sae::host_vec;

/// The most bytes one buffer of `device` can hold, where the backend says (wgpu: the
/// adapter's largest storage binding; cuda: what its allocator takes in one piece); `None`
/// for the CPU backends, whose tensors are host memory.
pub fn largest_buffer<B: Backend>(device: &B::Device) -> Option<u64> {
    use cubecl::Runtime;
    let device: &dyn Any = device;
    if let Some(device) = device.downcast_ref::<cubecl::wgpu::WgpuDevice>() {
        let client = cubecl::wgpu::WgpuRuntime::client(device);
        return Some(client.properties().memory.max_page_size);
    }
    #[cfg(feature = "cuda")]
    if let Some(device) = device.downcast_ref::<cubecl::cuda::CudaDevice>() {
        let client = cubecl::cuda::CudaRuntime::client(device);
        return Some(client.properties().memory.max_page_size);
    }
    None
}

/// Whether `B`'s float tensors are those of a cubecl backend the kernels run on.
pub(crate) fn is_cubecl<B: Backend>() -> bool {
    let id = TypeId::of::<B::FloatTensorPrimitive>();
    let known = is_runtime::<cubecl::wgpu::WgpuRuntime>(id);
    #[cfg(feature = "cuda")]
    let known = known || is_runtime::<cubecl::cuda::CudaRuntime>(id);
    known
}

fn is_runtime<R: CubeRuntime>(id: TypeId) -> bool {
    id == TypeId::of::<FusionTensor<FusionCubeRuntime<R>>>() || id == TypeId::of::<CubeTensor<R>>()
}

/// [`crate::aux_selection`] on the device: the candidates' weighted affinities (others at
/// `-inf`) go through the row top-k kernel, and the pairs that were only filling up a row
/// are dropped. `None` when `B` is not a cubecl backend.
pub(crate) fn aux_select_on_device<B: Backend>(
    affinities: &Tensor<B, 2>,
    weights: &[f32],
    k_aux: usize,
    activation: Activation,
) -> Option<Result<Selection>> {
    if !is_cubecl::<B>() {
        return None;
    }
    let [_, cols] = affinities.dims();
    if weights.len() != cols {
        return Some(Err(SaeError::Shape {
            what: "aux weights",
            expected: vec![cols],
            actual: vec![weights.len()],
        }));
    }
    let ranked = aux_ranked(affinities, weights, activation);
    let rule = BuiltinRule::RowTopK { k: k_aux.min(cols) };
    let padded = match select_on_device(&ranked, &rule)? {
        Ok(s) => s,
        Err(e) => return Some(Err(e)),
    };
    Some(drop_padding(affinities, &padded))
}

/// The scores the auxiliary selection ranks by: the candidates' weighted affinities where
/// they fire, `-inf` elsewhere (`weights` has one entry per column).
pub(crate) fn aux_ranked<B: Backend>(
    affinities: &Tensor<B, 2>,
    weights: &[f32],
    activation: Activation,
) -> Tensor<B, 2> {
    let [rows, cols] = affinities.dims();
    let w = Tensor::<B, 1>::from_data(
        TensorData::new(weights.to_vec(), [cols]),
        &affinities.device(),
    )
    .unsqueeze_dim::<2>(0);
    let candidate = w.clone().greater_elem(0.0).expand([rows, cols]);
    let keep = activation
        .fires_mask(affinities.clone())
        .bool_and(candidate);
    (affinities.clone() * w).mask_fill(keep.bool_not(), f32::NEG_INFINITY)
}

/// The pairs of `padded` whose ranked score is finite, scored with their affinities.
fn drop_padding<B: Backend>(affinities: &Tensor<B, 2>, padded: &Selection) -> Result<Selection> {
    let (rows, cols) = (padded.rows(), padded.cols());
    let mut offsets = Vec::with_capacity(rows + 1);
    offsets.push(0usize);
    let mut features = Vec::with_capacity(padded.nnz());
    let mut flat = Vec::with_capacity(padded.nnz());
    for row in 0..rows {
        let (row_features, row_scores) = padded.row(row);
        for (&f, &s) in row_features.iter().zip(row_scores) {
            if s != f32::NEG_INFINITY {
                features.push(f);
                flat.push((row * cols + f as usize) as i64);
            }
        }
        offsets.push(features.len());
    }
    let scores = if flat.is_empty() {
        Vec::new()
    } else {
        let index = Tensor::<B, 1, Int>::from_data(
            TensorData::new(flat.clone(), [flat.len()]),
            &affinities.device(),
        );
        host_vec(affinities.clone().reshape([rows * cols]).select(0, index))
    };
    Ok(Selection::from_parts(
        rows, cols, offsets, features, scores,
    )?)
}

/// Runs `rule` on the device that holds `scores` (`[N, F]`, f32), if `B` is a cubecl
/// backend; `None` when it is not (the caller then selects on the host).
pub(crate) fn select_on_device<B: Backend>(
    scores: &Tensor<B, 2>,
    rule: &BuiltinRule,
) -> Option<Result<Selection>> {
    if let Some(tensor) = to_cube::<B, cubecl::wgpu::WgpuRuntime, 2>(scores.clone()) {
        return Some(select_cube(tensor, rule));
    }
    #[cfg(feature = "cuda")]
    if let Some(tensor) = to_cube::<B, cubecl::cuda::CudaRuntime, 2>(scores.clone()) {
        return Some(select_cube(tensor, rule));
    }
    None
}

/// Runs the kernel of `rule` on a cubecl tensor and reads back its selection.
fn select_cube<R: CubeRuntime>(tensor: CubeTensor<R>, rule: &BuiltinRule) -> Result<Selection> {
    select_on_cube(&contiguous_scores(tensor)?, rule, None)?
        .to_selection()
        .map_err(kernel_error)
}

/// A contiguous f32 `[N, F]` tensor, or the error naming what it is instead.
pub(crate) fn contiguous_scores<R: CubeRuntime>(tensor: CubeTensor<R>) -> Result<CubeTensor<R>> {
    let shape = tensor.meta.shape().clone();
    let dims: Vec<usize> = shape.iter().copied().collect();
    if dims.len() != 2 || tensor.dtype != DType::F32 {
        return Err(SaeError::Config(format!(
            "device selection needs f32 [N, F] affinities, got {:?} {dims:?}",
            tensor.dtype
        )));
    }
    Ok(contiguous(tensor))
}

/// `tensor` with a contiguous layout (itself when it already has one).
pub(crate) fn contiguous<R: CubeRuntime>(tensor: CubeTensor<R>) -> CubeTensor<R> {
    if tensor.is_contiguous() {
        tensor
    } else {
        burn_cubecl::kernel::into_contiguous(tensor)
    }
}

/// Runs the kernel of `rule` on contiguous `[N, F]` scores, leaving the selection on the
/// device. `cut` is the global rule's candidate cut ([`sae_kernels::global_topk_with`]; the
/// other rules take none): it changes the time, never the selection.
pub(crate) fn select_on_cube<R: CubeRuntime>(
    tensor: &CubeTensor<R>,
    rule: &BuiltinRule,
    cut: Option<f32>,
) -> Result<DeviceSelection<R>> {
    let dims = tensor.meta.shape();
    let scores = DeviceScores::new(&tensor.client, &tensor.handle, dims[0], dims[1])
        .map_err(kernel_error)?;
    match rule {
        BuiltinRule::RowTopK { k } => sae_kernels::row_topk(&scores, *k),
        BuiltinRule::GlobalTopK { budget } => sae_kernels::global_topk_with(&scores, *budget, cut),
        BuiltinRule::ColumnTopM { capacities } => sae_kernels::column_topm(&scores, capacities),
    }
    .map_err(kernel_error)
}

/// Kernel errors that are rule errors (NaN scores, bad k) keep their `sae-alloc` form, so
/// callers see the same error on every backend.
pub(crate) fn kernel_error(e: KernelError) -> SaeError {
    match e {
        KernelError::Alloc(e) => SaeError::Alloc(e),
        e => SaeError::Device(e.to_string()),
    }
}

/// The cubecl tensor behind a float tensor of `B`, if `B` is a cubecl backend on runtime `R`
/// (with or without burn's fusion layer, whose pending operations are flushed first).
pub(crate) fn to_cube<B: Backend, R: CubeRuntime, const D: usize>(
    tensor: Tensor<B, D>,
) -> Option<CubeTensor<R>> {
    let primitive: Box<dyn Any> = Box::new(tensor.into_primitive().tensor());
    let primitive = match primitive.downcast::<FusionTensor<FusionCubeRuntime<R>>>() {
        Ok(fused) => {
            let client = fused.client.clone();
            // Flushes the pending fused operations and hands out the tensor's buffer.
            return Some(client.resolve_tensor_float::<CubeBackend<R, f32, i32, u32>>(*fused));
        }
        Err(other) => other,
    };
    primitive.downcast::<CubeTensor<R>>().ok().map(|t| *t)
}

/// A float tensor of `B` over the buffer of a cubecl tensor of runtime `R` (nothing is
/// copied); `None` unless `B` is a cubecl backend on `R`.
pub(crate) fn from_cube<B: Backend, R: CubeRuntime, const D: usize>(
    tensor: CubeTensor<R>,
) -> Option<Tensor<B, D>> {
    let id = TypeId::of::<B::FloatTensorPrimitive>();
    let primitive: Box<dyn Any> = if id == TypeId::of::<CubeTensor<R>>() {
        Box::new(tensor)
    } else if id == TypeId::of::<FusionTensor<FusionCubeRuntime<R>>>() {
        Box::new(into_fusion(tensor))
    } else {
        return None;
    };
    let primitive = *primitive.downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(primitive)))
}

/// Hands a buffer to burn's fusion layer as a new tensor, as `from_data` does with an
/// uploaded one.
fn into_fusion<R: CubeRuntime>(tensor: CubeTensor<R>) -> FusionTensor<FusionCubeRuntime<R>> {
    type Inner<R> = CubeBackend<R, f32, i32, u32>;
    let client = burn_fusion::get_client::<Inner<R>>(&tensor.device);
    let shape = tensor.meta.shape().clone();
    let dtype = tensor.dtype;
    let init = InitOperationIr::create(shape, dtype, || {
        client.register_tensor_handle(tensor.into())
    });
    client
        .register(
            OperationStreams::default(),
            OperationIr::Init(init),
            NoOp::<Inner<R>>::new(),
        )
        .remove(0)
}
