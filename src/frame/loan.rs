//! Loans: a message reserved whole in one ring record, its tensors filled in place, then
//! committed.

#[allow(unused_imports)]
use super::*;

/// A loan's message laid out once ([`FrameSender::prepare`]): its envelope, meta and tensor
/// table encoded, ready to be copied into each loan of the same layout.
#[derive(Clone, Debug)]
pub struct PreparedLoan {
    pub(super) kind: MessageKind,
    pub(super) epoch: u64,
    /// The body up to the data region.
    pub(super) prefix: Vec<u8>,
    pub(super) total: u64,
    pub(super) opaque: Range<u64>,
    pub(super) table: usize,
    pub(super) names: usize,
    pub(super) count: usize,
}

impl PreparedLoan {
    /// Bytes the message body takes (a ring record also holds a 64-byte fragment header).
    pub fn body_len(&self) -> u64 {
        self.total
    }
}

/// What a loaned message will hold: its data kind, meta, and the name, dtype and shape of each
/// tensor (filled in place later), plus the number of opaque bytes (APP_DEFINED only).
#[derive(Clone, Debug, PartialEq)]
pub struct LoanSpec {
    /// The data kind.
    pub data_kind: DataKind,
    /// The meta dictionary.
    pub meta: Map<String, Value>,
    /// Name, dtype and shape of each tensor.
    pub tensors: Vec<(String, DType, Vec<u64>)>,
    /// Opaque bytes to reserve.
    pub opaque_len: usize,
}

impl LoanSpec {
    /// A spec of this kind with no meta, tensors or opaque bytes.
    pub fn new(data_kind: DataKind) -> LoanSpec {
        LoanSpec {
            data_kind,
            meta: Map::new(),
            tensors: Vec::new(),
            opaque_len: 0,
        }
    }

    /// Adds a tensor to be filled in place.
    pub fn tensor(mut self, name: impl Into<String>, dtype: DType, shape: &[u64]) -> LoanSpec {
        self.tensors.push((name.into(), dtype, shape.to_vec()));
        self
    }

    /// Adds a meta entry.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<Value>) -> LoanSpec {
        self.meta.insert(key.into(), value.into());
        self
    }
}

/// Why a loan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoanError {
    /// The spec is not a valid DXO.
    #[error(transparent)]
    Dxo(#[from] DxoError),
    /// The ring could not take it.
    #[error(transparent)]
    Send(#[from] SendError),
}

/// Ring space lent for one message: fill the tensors in place, then [`Loan::commit`].
///
/// Tensor bytes the caller does not write hold whatever the ring held before.
#[must_use = "a loan sends nothing until it is committed; dropping it abandons the message"]
pub struct Loan<'p> {
    pub(super) grant: WriteGrant<'p>,
    pub(super) sequence: u64,
    pub(super) opaque: Range<usize>,
    /// Where the tensor table and the names start in the grant (this side wrote them: they
    /// are read back instead of being kept twice).
    pub(super) table: usize,
    pub(super) names: usize,
    pub(super) count: usize,
    /// Whether [`Loan::commit`] writes the payload's checksum.
    pub(super) checksum: bool,
}

impl fmt::Debug for Loan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loan")
            .field("sequence", &self.sequence)
            .field("tensors", &self.count)
            .finish()
    }
}

impl<'p> Loan<'p> {
    /// The message's sequence number.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.count
    }

    /// Entry `index` of the tensor table this loan wrote.
    pub(super) fn entry(&mut self, index: usize) -> Result<TensorEntry, ViewError> {
        if index >= self.count {
            return Err(ViewError::NoSuchIndex {
                index,
                count: self.count,
            });
        }
        let at = self.table + index * TENSOR_ENTRY_LEN;
        let bytes = &self.grant.as_mut_slice()[at..at + TENSOR_ENTRY_LEN];
        // The entry was written by this loan and the grant holds it whole, so the read succeeds.
        TensorEntry::read_from_bytes(bytes).map_err(|_| ViewError::NoSuchIndex {
            index,
            count: self.count,
        })
    }

    /// Index of the tensor named `name`.
    pub fn index_of(&mut self, name: &str) -> Option<usize> {
        (0..self.count).find(|&i| {
            self.entry(i).is_ok_and(|e| {
                let at = self.names + e.name_offset as usize;
                &self.grant.as_mut_slice()[at..at + usize::from(e.name_len)] == name.as_bytes()
            })
        })
    }

    /// Tensor `index` as mutable raw bytes in the ring.
    pub fn tensor_bytes_mut(&mut self, index: usize) -> Result<&mut [u8], ViewError> {
        let entry = self.entry(index)?;
        let start = FRAGMENT_HEADER_LEN + entry.data_offset as usize;
        Ok(&mut self.grant.as_mut_slice()[start..start + entry.data_len as usize])
    }

    /// Tensor `index` as a mutable slice of `T` in the ring (the dtype must be `T`'s).
    pub fn tensor_mut<T: Element + FromBytes + KnownLayout>(
        &mut self,
        index: usize,
    ) -> Result<&mut [T], ViewError> {
        let code = u32::from(self.entry(index)?.dtype);
        let actual = DType::from_code(code).ok_or(ViewError::NoSuchIndex {
            index,
            count: self.count,
        })?;
        if actual != T::DTYPE {
            return Err(ViewError::WrongDType {
                actual,
                asked: T::DTYPE,
            });
        }
        let bytes = self.tensor_bytes_mut(index)?;
        <[T]>::mut_from_bytes(bytes).map_err(|_| ViewError::Misaligned)
    }

    /// The opaque bytes, in the ring.
    pub fn opaque_mut(&mut self) -> &mut [u8] {
        let range = self.opaque.clone();
        &mut self.grant.as_mut_slice()[range]
    }

    /// Publishes the message (with the payload's checksum first, when the sender has
    /// [`FrameSender::with_checksum`]).
    pub fn commit(mut self) {
        if self.checksum {
            seal(self.grant.as_mut_slice());
        }
        self.grant.commit();
    }
}
