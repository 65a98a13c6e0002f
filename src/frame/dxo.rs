//! The DXO a sender builds: a data kind, meta, and named tensors borrowed from the caller.

#[allow(unused_imports)]
use super::*;

/// A tensor to send: a name, a dtype, a shape and the caller's bytes (borrowed, not copied
/// until the message is sent).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef<'a> {
    pub(super) name: String,
    pub(super) dtype: DType,
    pub(super) shape: Vec<u64>,
    pub(super) bytes: &'a [u8],
}

impl<'a> TensorRef<'a> {
    pub(super) fn desc(&self) -> TensorDesc<'_> {
        TensorDesc {
            name: &self.name,
            dtype: self.dtype,
            shape: &self.shape,
            len: self.bytes.len() as u64,
        }
    }

    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The shape.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }
    /// The raw bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Why a [`Dxo`] could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DxoError {
    /// Two tensors share a name.
    #[error("duplicate tensor name {0:?}")]
    DuplicateName(String),
    /// A tensor has an empty name.
    #[error("tensor names must not be empty")]
    EmptyName,
    /// A tensor name is longer than the format allows ([`u16::MAX`] bytes).
    #[error("tensor name of {len} bytes is longer than {max}")]
    NameTooLong {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A tensor has more than [`MAX_DIMS`] dimensions.
    #[error("tensor {name:?} has {ndim} dimensions, at most {MAX_DIMS} are allowed")]
    TooManyDims {
        /// The tensor.
        name: String,
        /// Its number of dimensions.
        ndim: usize,
    },
    /// A tensor's bytes do not match its shape and dtype.
    #[error("tensor {name:?}: shape {shape:?} of {dtype} needs {expected:?} bytes, got {actual}")]
    ShapeMismatch {
        /// The tensor.
        name: String,
        /// Its shape.
        shape: Vec<u64>,
        /// Its dtype.
        dtype: DType,
        /// Bytes the shape needs (`None` if the product overflows).
        expected: Option<u64>,
        /// Bytes given.
        actual: usize,
    },
    /// Opaque bytes were given for a data kind other than APP_DEFINED.
    #[error("opaque bytes need data kind APP_DEFINED, this DXO is {0}")]
    OpaqueNotAppDefined(DataKind),
}

/// A DXO to send: a data kind, a meta dictionary, named tensors borrowed from the caller and,
/// for APP_DEFINED, optional opaque bytes.
///
/// ```
/// use shmex::frame::{DataKind, Dxo};
/// # fn main() -> Result<(), shmex::frame::DxoError> {
/// let weights = vec![0.5f32; 64 * 10];
/// let bias = vec![0.0f32; 10];
/// let dxo = Dxo::new(DataKind::Weights)
///     .with_meta("current_round", 3)
///     .with_tensor("fc.weight", &[10, 64], &weights)?
///     .with_tensor("fc.bias", &[10], &bias)?;
/// assert_eq!(dxo.tensors().len(), 2);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Dxo<'a> {
    pub(super) data_kind: DataKind,
    pub(super) meta: Map<String, Value>,
    pub(super) tensors: Vec<TensorRef<'a>>,
    pub(super) names: HashSet<String>,
    pub(super) opaque: Option<&'a [u8]>,
}

impl<'a> Dxo<'a> {
    /// An empty DXO of this kind.
    pub fn new(data_kind: DataKind) -> Dxo<'a> {
        Dxo {
            data_kind,
            meta: Map::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            opaque: None,
        }
    }

    /// Adds (or replaces) a meta entry.
    pub fn with_meta(mut self, key: impl Into<String>, value: impl Into<Value>) -> Dxo<'a> {
        self.meta.insert(key.into(), value.into());
        self
    }

    /// Replaces the whole meta dictionary.
    pub fn with_meta_map(mut self, meta: Map<String, Value>) -> Dxo<'a> {
        self.meta = meta;
        self
    }

    /// Adds a tensor of elements `T` (its dtype is `T`'s).
    pub fn with_tensor<T: Element>(
        self,
        name: impl Into<String>,
        shape: &[u64],
        data: &'a [T],
    ) -> Result<Dxo<'a>, DxoError> {
        self.with_tensor_bytes(name, T::DTYPE, shape, data.as_bytes())
    }

    /// Adds a tensor given as raw bytes of `dtype` elements.
    pub fn with_tensor_bytes(
        mut self,
        name: impl Into<String>,
        dtype: DType,
        shape: &[u64],
        bytes: &'a [u8],
    ) -> Result<Dxo<'a>, DxoError> {
        self.push_tensor_bytes(name, dtype, shape, bytes)?;
        Ok(self)
    }

    /// Adds a tensor of elements `T` in place, so that a DXO can be built in a loop:
    ///
    /// ```
    /// use shmex::frame::{DataKind, Dxo};
    /// # fn main() -> Result<(), shmex::frame::DxoError> {
    /// let layers = vec![vec![0.5f32; 16]; 3];
    /// let names: Vec<String> = (0..layers.len()).map(|i| format!("layer{i}.weight")).collect();
    /// let mut dxo = Dxo::new(DataKind::Weights);
    /// for (name, layer) in names.iter().zip(&layers) {
    ///     dxo.push_tensor(name.as_str(), &[16], layer)?;
    /// }
    /// assert_eq!(dxo.tensors().len(), 3);
    /// # Ok(()) }
    /// ```
    pub fn push_tensor<T: Element>(
        &mut self,
        name: impl Into<String>,
        shape: &[u64],
        data: &'a [T],
    ) -> Result<(), DxoError> {
        self.push_tensor_bytes(name, T::DTYPE, shape, data.as_bytes())
    }

    /// Adds a tensor given as raw bytes of `dtype` elements, in place; on an error the DXO is
    /// unchanged.
    pub fn push_tensor_bytes(
        &mut self,
        name: impl Into<String>,
        dtype: DType,
        shape: &[u64],
        bytes: &'a [u8],
    ) -> Result<(), DxoError> {
        let name = name.into();
        check_tensor_spec(&name, dtype, shape, Some(bytes.len()))?;
        if !self.names.insert(name.clone()) {
            return Err(DxoError::DuplicateName(name));
        }
        self.tensors.push(TensorRef {
            name,
            dtype,
            shape: shape.to_vec(),
            bytes,
        });
        Ok(())
    }

    /// Attaches opaque bytes (APP_DEFINED only).
    pub fn with_opaque(mut self, bytes: &'a [u8]) -> Result<Dxo<'a>, DxoError> {
        if self.data_kind != DataKind::AppDefined {
            return Err(DxoError::OpaqueNotAppDefined(self.data_kind));
        }
        self.opaque = Some(bytes);
        Ok(self)
    }

    /// The data kind.
    pub fn data_kind(&self) -> DataKind {
        self.data_kind
    }
    /// The meta dictionary.
    pub fn meta(&self) -> &Map<String, Value> {
        &self.meta
    }
    /// The tensors, in the order they were added.
    pub fn tensors(&self) -> &[TensorRef<'a>] {
        &self.tensors
    }
    /// The opaque bytes, if any.
    pub fn opaque(&self) -> Option<&'a [u8]> {
        self.opaque
    }
}

/// Checks a tensor's name, dimensions and (if given) byte length; returns its byte length.
pub(super) fn check_tensor_spec(
    name: &str,
    dtype: DType,
    shape: &[u64],
    actual: Option<usize>,
) -> Result<u64, DxoError> {
    if name.is_empty() {
        return Err(DxoError::EmptyName);
    }
    if name.len() > u16::MAX as usize {
        return Err(DxoError::NameTooLong {
            len: name.len(),
            max: u16::MAX as usize,
        });
    }
    if shape.len() > MAX_DIMS {
        return Err(DxoError::TooManyDims {
            name: name.to_string(),
            ndim: shape.len(),
        });
    }
    let expected = tensor_len(dtype, shape);
    match (expected, actual) {
        (Some(e), Some(a)) if e == a as u64 => Ok(e),
        (Some(e), None) => Ok(e),
        _ => Err(DxoError::ShapeMismatch {
            name: name.to_string(),
            shape: shape.to_vec(),
            dtype,
            expected,
            actual: actual.unwrap_or(0),
        }),
    }
}

/// Bytes of a tensor of `shape` and `dtype`; `None` on overflow.
pub(super) fn tensor_len(dtype: DType, shape: &[u64]) -> Option<u64> {
    shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))?
        .checked_mul(dtype.size() as u64)
}
