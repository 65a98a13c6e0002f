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

/// Where a loaned message's parts lie in its ring record (offsets from the record start),
/// shared by [`Loan`] and [`DetachedLoan`]: the tensor table and names are read back from the
/// record (this side wrote them) instead of being kept twice.
#[derive(Clone, Debug)]
pub(super) struct LoanLayout {
    pub(super) sequence: u64,
    pub(super) opaque: Range<usize>,
    pub(super) table: usize,
    pub(super) names: usize,
    pub(super) count: usize,
    /// Whether the commit writes the payload's checksum.
    pub(super) checksum: bool,
}

impl LoanLayout {
    pub(super) fn for_prepared(
        prepared: &PreparedLoan,
        sequence: u64,
        checksum: bool,
    ) -> LoanLayout {
        let at = |offset: u64| offset as usize + FRAGMENT_HEADER_LEN;
        LoanLayout {
            sequence,
            opaque: at(prepared.opaque.start)..at(prepared.opaque.end),
            table: at(prepared.table as u64),
            names: at(prepared.names as u64),
            count: prepared.count,
            checksum,
        }
    }

    /// Writes the fragment header and the prepared prefix into a fresh record.
    pub(super) fn write_headers(&self, prepared: &PreparedLoan, record: &mut [u8]) {
        let checksum_flag = if self.checksum { FLAG_CHECKSUM } else { 0 };
        let header = FragmentHeader::new(
            prepared.kind,
            FLAG_FIRST | FLAG_LAST | checksum_flag,
            self.sequence,
            0,
            prepared.total,
            0..prepared.total,
            prepared.epoch,
        );
        record[..FRAGMENT_HEADER_LEN].copy_from_slice(header.as_bytes());
        record[FRAGMENT_HEADER_LEN..FRAGMENT_HEADER_LEN + prepared.prefix.len()]
            .copy_from_slice(&prepared.prefix);
    }

    /// Entry `index` of the tensor table in `record`.
    fn entry(&self, record: &[u8], index: usize) -> Result<TensorEntry, ViewError> {
        let missing = ViewError::NoSuchIndex {
            index,
            count: self.count,
        };
        if index >= self.count {
            return Err(missing);
        }
        let at = self.table + index * TENSOR_ENTRY_LEN;
        // The entry was written by this loan and the record holds it whole, so the read
        // succeeds.
        TensorEntry::read_from_bytes(&record[at..at + TENSOR_ENTRY_LEN]).map_err(|_| missing)
    }

    fn index_of(&self, record: &[u8], name: &str) -> Option<usize> {
        (0..self.count).find(|&i| {
            self.entry(record, i).is_ok_and(|e| {
                let at = self.names + e.name_offset as usize;
                &record[at..at + usize::from(e.name_len)] == name.as_bytes()
            })
        })
    }

    fn tensor_bytes_mut<'r>(
        &self,
        record: &'r mut [u8],
        index: usize,
    ) -> Result<&'r mut [u8], ViewError> {
        let entry = self.entry(record, index)?;
        let start = FRAGMENT_HEADER_LEN + entry.data_offset as usize;
        Ok(&mut record[start..start + entry.data_len as usize])
    }

    fn tensor_mut<'r, T: Element + FromBytes + KnownLayout>(
        &self,
        record: &'r mut [u8],
        index: usize,
    ) -> Result<&'r mut [T], ViewError> {
        let code = u32::from(self.entry(record, index)?.dtype);
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
        let bytes = self.tensor_bytes_mut(record, index)?;
        <[T]>::mut_from_bytes(bytes).map_err(|_| ViewError::Misaligned)
    }

    /// Writes the checksum, if the sender asked for one: the last step before publishing.
    fn seal(&self, record: &mut [u8]) {
        if self.checksum {
            seal(record);
        }
    }
}

/// Ring space lent for one message: fill the tensors in place, then [`Loan::commit`].
///
/// Tensor bytes the caller does not write hold whatever the ring held before.
#[must_use = "a loan sends nothing until it is committed; dropping it abandons the message"]
pub struct Loan<'p> {
    pub(super) grant: WriteGrant<'p>,
    pub(super) layout: LoanLayout,
}

impl fmt::Debug for Loan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loan")
            .field("sequence", &self.layout.sequence)
            .field("tensors", &self.layout.count)
            .finish()
    }
}

impl<'p> Loan<'p> {
    pub(super) fn new(
        mut grant: WriteGrant<'p>,
        prepared: &PreparedLoan,
        sequence: u64,
        checksum: bool,
    ) -> Loan<'p> {
        let layout = LoanLayout::for_prepared(prepared, sequence, checksum);
        layout.write_headers(prepared, grant.as_mut_slice());
        Loan { grant, layout }
    }

    /// The message's sequence number.
    pub fn sequence(&self) -> u64 {
        self.layout.sequence
    }

    /// Number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.layout.count
    }

    /// Index of the tensor named `name`.
    pub fn index_of(&mut self, name: &str) -> Option<usize> {
        self.layout.index_of(self.grant.as_mut_slice(), name)
    }

    /// Tensor `index` as mutable raw bytes in the ring.
    pub fn tensor_bytes_mut(&mut self, index: usize) -> Result<&mut [u8], ViewError> {
        self.layout
            .tensor_bytes_mut(self.grant.as_mut_slice(), index)
    }

    /// Tensor `index` as a mutable slice of `T` in the ring (the dtype must be `T`'s).
    pub fn tensor_mut<T: Element + FromBytes + KnownLayout>(
        &mut self,
        index: usize,
    ) -> Result<&mut [T], ViewError> {
        self.layout.tensor_mut(self.grant.as_mut_slice(), index)
    }

    /// The opaque bytes, in the ring.
    pub fn opaque_mut(&mut self) -> &mut [u8] {
        let range = self.layout.opaque.clone();
        &mut self.grant.as_mut_slice()[range]
    }

    /// Publishes the message (with the payload's checksum first, when the sender has
    /// [`FrameSender::with_checksum`]).
    pub fn commit(mut self) {
        self.layout.seal(self.grant.as_mut_slice());
        self.grant.commit();
    }
}

/// A loan that does not borrow the producer ([`FrameSender::loan_detached`]): ring space for
/// one whole message, reserved by position ([`Reservation`]), so that an owner can keep it
/// across calls while the producer is kept beside it. Each access takes that producer and
/// checks that nothing else was published on it since the reservation
/// ([`ViewError::StaleLoan`] otherwise). Nothing is visible to the receiver until
/// [`DetachedLoan::commit`]; dropping it abandons the message.
#[must_use = "a loan sends nothing until it is committed; dropping it abandons the message"]
#[derive(Debug)]
pub struct DetachedLoan {
    pub(super) reservation: Reservation,
    pub(super) layout: LoanLayout,
}

/// Where a committed [`DetachedLoan`] lies in the ring, to read it back
/// ([`DetachedLoan::copy_committed`]) while the producer has not written over it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommittedLoan {
    /// The record's ring position.
    pub position: u64,
    /// The record's length: fragment header and body.
    pub len: usize,
}

impl DetachedLoan {
    /// Reserves ring space for one message of a prepared layout with sequence number and
    /// checksum setting `ticket` (see [`FrameSender::loan_detached`], which takes the ticket
    /// itself).
    pub fn reserve(
        producer: &mut Producer,
        prepared: &PreparedLoan,
        ticket: SendTicket,
        deadline: Option<Instant>,
        cancel: Option<(&dyn Fn() -> bool, Duration)>,
    ) -> Result<DetachedLoan, LoanError> {
        let needed = prepared.total + FRAGMENT_HEADER_LEN as u64;
        if needed > producer.max_record() as u64 {
            return Err(SendError::TooLargeForLoan {
                needed,
                max: producer.max_record(),
            }
            .into());
        }
        let reservation = reserve_cancellable(producer, needed as usize, deadline, cancel)?;
        let layout = LoanLayout::for_prepared(prepared, ticket.sequence, ticket.checksum);
        let record = producer
            .reservation_mut(&reservation)
            .map_err(|_| SendError::Cancelled)?;
        layout.write_headers(prepared, record);
        Ok(DetachedLoan {
            reservation,
            layout,
        })
    }

    fn record<'p>(&self, producer: &'p mut Producer) -> Result<&'p mut [u8], ViewError> {
        producer
            .reservation_mut(&self.reservation)
            .map_err(|_| ViewError::StaleLoan)
    }

    /// The message's sequence number.
    pub fn sequence(&self) -> u64 {
        self.layout.sequence
    }

    /// Number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.layout.count
    }

    /// Bytes of the ring record (fragment header and body).
    pub fn record_len(&self) -> usize {
        self.reservation.len()
    }

    /// Index of the tensor named `name`.
    pub fn index_of(
        &self,
        producer: &mut Producer,
        name: &str,
    ) -> Result<Option<usize>, ViewError> {
        Ok(self.layout.index_of(self.record(producer)?, name))
    }

    /// Tensor `index` as mutable raw bytes in the ring.
    pub fn tensor_bytes_mut<'p>(
        &self,
        producer: &'p mut Producer,
        index: usize,
    ) -> Result<&'p mut [u8], ViewError> {
        self.layout.tensor_bytes_mut(self.record(producer)?, index)
    }

    /// Tensor `index` as a mutable slice of `T` in the ring (the dtype must be `T`'s).
    pub fn tensor_mut<'p, T: Element + FromBytes + KnownLayout>(
        &self,
        producer: &'p mut Producer,
        index: usize,
    ) -> Result<&'p mut [T], ViewError> {
        self.layout.tensor_mut(self.record(producer)?, index)
    }

    /// The opaque bytes, in the ring.
    pub fn opaque_mut<'p>(&self, producer: &'p mut Producer) -> Result<&'p mut [u8], ViewError> {
        let range = self.layout.opaque.clone();
        Ok(&mut self.record(producer)?[range])
    }

    /// Stamps the message with the receiver incarnation it is addressed to (the fragment
    /// header's epoch; the header is outside the checksum), e.g. when the receiver changed
    /// while the loan was being filled.
    pub fn set_epoch(&self, producer: &mut Producer, epoch: u64) -> Result<(), ViewError> {
        let record = self.record(producer)?;
        let mut header = FragmentHeader::read_from_bytes(&record[..FRAGMENT_HEADER_LEN])
            .map_err(|_| ViewError::StaleLoan)?;
        header.epoch = epoch;
        record[..FRAGMENT_HEADER_LEN].copy_from_slice(header.as_bytes());
        Ok(())
    }

    /// Sets the message's return code (the body header's `rc`), e.g. a result's, known only
    /// when the loan is committed.
    pub fn set_rc(&self, producer: &mut Producer, rc: ReturnCode) -> Result<(), ViewError> {
        let record = self.record(producer)?;
        let at = FRAGMENT_HEADER_LEN..FRAGMENT_HEADER_LEN + BODY_HEADER_LEN;
        let mut header =
            BodyHeader::read_from_bytes(&record[at.clone()]).map_err(|_| ViewError::StaleLoan)?;
        header.rc = rc.code();
        record[at].copy_from_slice(header.as_bytes());
        Ok(())
    }

    /// Publishes the message (with the payload's checksum first, when the sender has
    /// [`FrameSender::with_checksum`]). Fails, publishing nothing, if the loan is stale.
    pub fn commit(self, producer: &mut Producer) -> Result<CommittedLoan, ViewError> {
        self.layout.seal(self.record(producer)?);
        let committed = CommittedLoan {
            position: self.reservation.position(),
            len: self.reservation.len(),
        };
        producer
            .commit_reservation(self.reservation)
            .map_err(|_| ViewError::StaleLoan)?;
        Ok(committed)
    }

    /// Copies a committed loan's record (fragment header and body) out of the ring, if the
    /// producer has not written over it since ([`Producer::copy_committed`]); `None` if it
    /// has. [`FrameSender::resend`] sends the copy again.
    pub fn copy_committed(producer: &Producer, committed: CommittedLoan) -> Option<RecordCopy> {
        if committed.len < FRAGMENT_HEADER_LEN {
            return None;
        }
        let mut record = vec![0u8; committed.len];
        producer
            .copy_committed(committed.position, &mut record)
            .then_some(RecordCopy { record })
    }
}

/// A committed loan's record copied out of the ring ([`DetachedLoan::copy_committed`]), to be
/// sent again ([`FrameSender::resend`]) to another receiver incarnation.
#[derive(Clone, Debug)]
pub struct RecordCopy {
    /// Fragment header and body; at least [`FRAGMENT_HEADER_LEN`] bytes.
    pub(super) record: Vec<u8>,
}

impl RecordCopy {
    /// Bytes of the record (fragment header and body).
    pub fn len(&self) -> usize {
        self.record.len()
    }

    /// Always `false`: a record holds at least its fragment header.
    pub fn is_empty(&self) -> bool {
        self.record.is_empty()
    }
}
