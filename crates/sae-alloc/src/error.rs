//! The one error type of the crate.

/// Why an allocation could not be computed. Every variant names the argument at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AllocError {
    /// The score matrix has no rows or no columns.
    #[error("score matrix is empty: {rows} rows x {cols} columns")]
    EmptyMatrix {
        /// Declared number of rows (tokens).
        rows: usize,
        /// Declared number of columns (features).
        cols: usize,
    },
    /// The score slice does not hold rows x cols values.
    #[error("score slice holds {len} values, but {rows} rows x {cols} columns need {expected}")]
    ShapeMismatch {
        /// Length of the slice.
        len: usize,
        /// Declared number of rows.
        rows: usize,
        /// Declared number of columns.
        cols: usize,
        /// rows x cols.
        expected: usize,
    },
    /// A dimension does not fit the u32 indices of a [`crate::Selection`].
    #[error("{what} = {value} exceeds the u32 index range")]
    DimensionTooLarge {
        /// Which dimension ("rows" or "cols").
        what: &'static str,
        /// Its value.
        value: usize,
    },
    /// A score is NaN: NaN has no place in a ranking, so it is rejected rather than selected.
    #[error("score at row {row}, column {col} is NaN")]
    NanScore {
        /// Row (token) of the first NaN found.
        row: usize,
        /// Column (feature) of the first NaN found.
        col: usize,
    },
    /// `row_topk` was asked for more features than a row has.
    #[error("k = {k} exceeds the {cols} features of a row")]
    KTooLarge {
        /// The requested k.
        k: usize,
        /// Features per row.
        cols: usize,
    },
    /// `global_topk` was asked for more entries than the matrix has.
    #[error("budget = {budget} exceeds the {available} entries of the score matrix")]
    BudgetTooLarge {
        /// The requested budget.
        budget: usize,
        /// rows x cols.
        available: usize,
    },
    /// The capacity vector's length differs from the number of features.
    #[error("{got} capacities given for a score matrix with {expected} features")]
    CapacityCount {
        /// Length of the capacity vector.
        got: usize,
        /// Number of columns of the score matrix.
        expected: usize,
    },
    /// A feature's capacity exceeds the number of tokens in the batch.
    #[error(
        "capacity of feature {feature} is {capacity}, more than the {rows} tokens of the batch"
    )]
    CapacityTooLarge {
        /// The feature at fault.
        feature: usize,
        /// Its capacity.
        capacity: u32,
        /// Rows (tokens) of the score matrix.
        rows: usize,
    },
    /// Explicit capacities do not add up to the declared budget.
    #[error("capacities sum to {sum}, not to the budget {budget}")]
    CapacitySum {
        /// Sum of the capacities.
        sum: usize,
        /// The declared budget.
        budget: usize,
    },
    /// No capacity vector within the per-feature bounds sums to the budget.
    #[error(
        "budget {budget} cannot be spread over {features} features with {min_per_feature}..={max_per_feature} each"
    )]
    BudgetUnreachable {
        /// The requested budget.
        budget: usize,
        /// Number of features.
        features: usize,
        /// Smallest capacity allowed per feature.
        min_per_feature: u32,
        /// Largest capacity allowed per feature.
        max_per_feature: u32,
    },
    /// A Zipf exponent that is negative or not finite.
    #[error("Zipf exponent must be finite and >= 0, got {exponent}")]
    InvalidExponent {
        /// The exponent given.
        exponent: f64,
    },
    /// A rank order that is not a permutation of the feature ids.
    #[error("rank order over {features} features is not a permutation: {reason}")]
    InvalidOrder {
        /// Length of the order.
        features: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Zipf capacities whose `f64` shares carry so much rounding error that largest-remainder
    /// rounding cannot make them sum exactly to the budget (only for budgets far beyond any
    /// batch); reported instead of returning capacities that break the rounding rule.
    #[error(
        "Zipf capacities for budget {budget} over {features} features (exponent {exponent}) cannot be rounded exactly in f64"
    )]
    ZipfRounding {
        /// The requested budget.
        budget: usize,
        /// Number of features.
        features: usize,
        /// The Zipf exponent.
        exponent: f64,
    },
    /// An exponential-moving-average decay outside [0, 1).
    #[error("EMA decay must be in [0, 1), got {decay}")]
    InvalidDecay {
        /// The decay given.
        decay: f32,
    },
    /// Per-feature thresholds whose count differs from the number of features.
    #[error("{got} thresholds given for a score matrix with {expected} features")]
    ThresholdCount {
        /// Number of thresholds.
        got: usize,
        /// Number of columns of the score matrix.
        expected: usize,
    },
    /// The shards of a sharded batch disagree on the number of features.
    #[error("the shard of peer {peer} has {cols} columns, this peer's has {expected}")]
    ShardMismatch {
        /// The first peer whose shard differs.
        peer: usize,
        /// Its number of columns.
        cols: usize,
        /// This peer's number of columns.
        expected: usize,
    },
    /// A selection whose shape differs from what the operation expects.
    #[error("selection is inconsistent: {reason}")]
    InvalidSelection {
        /// What is wrong with it.
        reason: String,
    },
}
