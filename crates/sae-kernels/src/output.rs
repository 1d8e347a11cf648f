//! Device-side inputs and outputs: a score matrix already on the device, and the selection
//! the kernels leave there (the device twin of [`sae_alloc::Selection`]).

use cubecl::prelude::*;
use cubecl::server::Handle;
use sae_alloc::{AllocError, Selection};

use crate::KernelError;
use crate::launch::{check_words, read_u32, read_words, reported_plane_ops};

/// A row-major `rows x cols` f32 score matrix in a device buffer (for example the handle of a
/// burn `CubeTensor`), borrowed with the client that owns it. Nothing is copied.
pub struct DeviceScores<'a, R: Runtime> {
    client: &'a ComputeClient<R>,
    handle: &'a Handle,
    rows: usize,
    cols: usize,
    plane_ops: bool,
}

// By hand: a derive would ask `R: Clone`, which the borrowed fields do not need.
impl<R: Runtime> Clone for DeviceScores<'_, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R: Runtime> Copy for DeviceScores<'_, R> {}

impl<R: Runtime> std::fmt::Debug for DeviceScores<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceScores")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("plane_ops", &self.plane_ops)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> std::fmt::Debug for DeviceSelection<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSelection")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("nnz", &self.nnz)
            .finish_non_exhaustive()
    }
}

impl<'a, R: Runtime> DeviceScores<'a, R> {
    /// Wraps `handle`, which must hold at least `rows * cols` contiguous f32 scores.
    pub fn new(
        client: &'a ComputeClient<R>,
        handle: &'a Handle,
        rows: usize,
        cols: usize,
    ) -> Result<Self, KernelError> {
        if rows == 0 || cols == 0 {
            return Err(AllocError::EmptyMatrix { rows, cols }.into());
        }
        let total = rows
            .checked_mul(cols)
            .filter(|&t| t <= u32::MAX as usize)
            .ok_or(KernelError::TooManyScores { rows, cols })?;
        check_words("scores", handle, total)?;
        Ok(Self {
            client,
            handle,
            rows,
            cols,
            plane_ops: reported_plane_ops(client),
        })
    }

    /// The same scores, with the kernels' prefix sums made by plane (warp) operations
    /// (`true`) or in shared memory (`false`); the selection is the same bit for bit. The
    /// default is what the runtime reports it supports. cubecl reports no plane operations on
    /// CPU devices, yet Mesa lavapipe runs them (8 units a plane), which is how both ways are
    /// tested without a GPU.
    pub fn with_plane_ops(mut self, on: bool) -> Self {
        self.plane_ops = on;
        self
    }

    /// Whether the kernels use plane operations on these scores.
    pub fn plane_ops(&self) -> bool {
        self.plane_ops
    }

    /// Number of rows (tokens).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The client the kernels are launched on.
    pub fn client(&self) -> &'a ComputeClient<R> {
        self.client
    }

    /// The buffer of scores.
    pub fn handle(&self) -> &'a Handle {
        self.handle
    }
}

/// Copies host scores into a new device buffer (for tests, benchmarks and callers that do
/// not already hold the scores on the device).
pub fn upload_scores<R: Runtime>(client: &ComputeClient<R>, scores: &[f32]) -> Handle {
    client.create_from_slice(f32::as_bytes(scores))
}

/// Selected (token, feature) pairs left on the device, in the layout of
/// [`sae_alloc::Selection`]: `offsets` (`rows + 1` u32, CSR by row), `features` (`nnz` u32,
/// ascending within a row), `scores` (`nnz` f32, the selected scores bit for bit), the row of
/// every pair (`token_ids`, `nnz` u32), plus
/// `feature_counts` (`cols` u32, how often each feature was selected) for dead-feature
/// statistics, and a NaN flag.
///
/// Buffers of zero length are allocated with one element, so that every handle is valid.
pub struct DeviceSelection<R: Runtime> {
    pub(crate) client: ComputeClient<R>,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) nnz: usize,
    pub(crate) offsets: Handle,
    pub(crate) tokens: Handle,
    pub(crate) features: Handle,
    pub(crate) scores: Handle,
    pub(crate) feature_counts: Handle,
    pub(crate) nan: Handle,
}

impl<R: Runtime> DeviceSelection<R> {
    /// Number of rows (tokens) of the scored matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (features) of the scored matrix.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of selected pairs.
    pub fn nnz(&self) -> usize {
        self.nnz
    }

    /// Row offsets: `rows + 1` u32, row `i`'s pairs are `offsets[i]..offsets[i + 1]`.
    pub fn offsets(&self) -> &Handle {
        &self.offsets
    }

    /// Token (row) of every pair (`nnz` u32), the device twin of
    /// [`sae_alloc::Selection::token_ids`]: what gathers and segment sums over pairs index by.
    pub fn token_ids(&self) -> &Handle {
        &self.tokens
    }

    /// Feature id of every pair (`nnz` u32), ascending within a row.
    pub fn features(&self) -> &Handle {
        &self.features
    }

    /// Score of every pair (`nnz` f32), as it was in the score matrix.
    pub fn scores(&self) -> &Handle {
        &self.scores
    }

    /// How many tokens selected each feature (`cols` u32).
    pub fn feature_counts(&self) -> &Handle {
        &self.feature_counts
    }

    /// One u32: the row-major index of the first NaN score, or `u32::MAX` if there was none.
    /// A selection computed from scores with a NaN is meaningless.
    pub fn nan_flag(&self) -> &Handle {
        &self.nan
    }

    /// A host selection on the device, for the kernels that read one (e.g. the pairs a
    /// sharded rule kept of a device's candidates). Its NaN flag is clear: a host
    /// [`Selection`] holds no NaN score.
    pub fn upload(client: &ComputeClient<R>, selection: &Selection) -> Self {
        let words = |v: &[u32]| match v.is_empty() {
            true => client.create_from_slice(u32::as_bytes(&[0])),
            false => client.create_from_slice(u32::as_bytes(v)),
        };
        let offsets: Vec<u32> = selection.offsets().iter().map(|&o| o as u32).collect();
        let scores: Vec<u32> = selection.scores().iter().map(|s| s.to_bits()).collect();
        Self {
            client: client.clone(),
            rows: selection.rows(),
            cols: selection.cols(),
            nnz: selection.nnz(),
            offsets: words(&offsets),
            tokens: words(&selection.token_ids()),
            features: words(selection.features()),
            scores: words(&scores),
            feature_counts: words(&selection.counts_per_feature()),
            nan: words(&[u32::MAX]),
        }
    }

    /// Reads back the NaN flag (4 bytes): an error if any score was NaN.
    pub fn check(&self) -> Result<(), KernelError> {
        self.nan_result(read_u32(&self.client, &self.nan)?[0])
    }

    /// The error a NaN flag stands for, if any.
    fn nan_result(&self, flag: u32) -> Result<(), KernelError> {
        if flag == u32::MAX {
            Ok(())
        } else {
            let flat = flag as usize;
            Err(AllocError::NanScore {
                row: flat / self.cols,
                col: flat % self.cols,
            }
            .into())
        }
    }

    /// Reads back the O(nnz) outputs into a host [`Selection`], after [`Self::check`], with
    /// one synchronisation.
    pub fn to_selection(&self) -> Result<Selection, KernelError> {
        Ok(self.read_with(Vec::new())?.0)
    }

    /// [`Self::to_selection`] and the bytes of `extra` buffers, all read with one
    /// synchronisation (the NaN check comes first: nothing else is returned after a NaN).
    pub(crate) fn read_with(
        &self,
        extra: Vec<Handle>,
    ) -> Result<(Selection, Vec<Vec<u32>>), KernelError> {
        let mut handles = vec![
            self.nan.clone(),
            self.offsets.clone(),
            self.features.clone(),
            self.scores.clone(),
        ];
        handles.extend(extra);
        let mut words = read_words(&self.client, handles)?;
        let extra = words.split_off(4);
        self.nan_result(words[0][0])?;
        let offsets = words[1][..=self.rows].iter().map(|&o| o as usize).collect();
        let features = words[2][..self.nnz].to_vec();
        let scores = words[3][..self.nnz]
            .iter()
            .map(|&b| f32::from_bits(b))
            .collect();
        let selection = Selection::from_parts(self.rows, self.cols, offsets, features, scores)?;
        Ok((selection, extra))
    }

    /// Reads back the per-feature selection counts, after [`Self::check`].
    pub fn counts_per_feature(&self) -> Result<Vec<u32>, KernelError> {
        self.check()?;
        let mut counts = read_u32(&self.client, &self.feature_counts)?;
        counts.truncate(self.cols);
        Ok(counts)
    }

    /// Reads back the token of every pair (`nnz` u32), after [`Self::check`].
    pub fn read_token_ids(&self) -> Result<Vec<u32>, KernelError> {
        self.check()?;
        let mut tokens = read_u32(&self.client, &self.tokens)?;
        tokens.truncate(self.nnz);
        Ok(tokens)
    }
}
