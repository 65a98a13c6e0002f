//! A received message ([`Message`], [`OwnedMessage`]) and its tensors viewed in place
//! ([`TensorView`]).

#[allow(unused_imports)]
use super::*;

/// The accessors [`Message`] and [`OwnedMessage`] share, written once: both hold `kind`,
/// `sequence` and the parse (`parsed`) and have a private `body()`.
macro_rules! received_accessors {
    () => {
        /// The message kind.
        pub fn kind(&self) -> MessageKind {
            self.kind
        }

        /// The sender's sequence number.
        pub fn sequence(&self) -> u64 {
            self.sequence
        }

        /// The agent incarnation the message comes from or is addressed to (0: none).
        pub fn epoch(&self) -> u64 {
            self.parsed.epoch
        }

        /// The sequence number of the message this one answers (0: none).
        pub fn reply_to(&self) -> u64 {
            self.parsed.reply_to
        }

        /// The return code.
        pub fn rc(&self) -> ReturnCode {
            self.parsed.rc
        }

        /// The task id ("" for none).
        pub fn task_id(&self) -> &str {
            &self.parsed.strings[self.parsed.task_id.clone()]
        }

        /// The task name ("" for none).
        pub fn task_name(&self) -> &str {
            &self.parsed.strings[self.parsed.task_name.clone()]
        }

        /// Whether the message carries a DXO.
        pub fn has_dxo(&self) -> bool {
            self.parsed.data_kind.is_some()
        }

        /// The DXO's data kind (`None` if the message carries no DXO).
        pub fn data_kind(&self) -> Option<DataKind> {
            self.parsed.data_kind
        }

        /// The DXO's meta dictionary (empty if none).
        pub fn meta(&self) -> &Map<String, Value> {
            &self.parsed.meta
        }

        /// The opaque bytes (empty if none).
        pub fn opaque(&self) -> &[u8] {
            &self.body()[self.parsed.opaque.clone()]
        }

        /// Number of tensors.
        pub fn tensor_count(&self) -> usize {
            self.parsed.tensors.len()
        }

        /// The tensors, in order.
        pub fn tensors(&self) -> impl ExactSizeIterator<Item = TensorView<'_>> + '_ {
            (0..self.parsed.tensors.len()).map(move |i| self.view(i))
        }

        /// Tensor `index`.
        pub fn tensor(&self, index: usize) -> Option<TensorView<'_>> {
            (index < self.parsed.tensors.len()).then(|| self.view(index))
        }

        /// The tensor named `name`.
        pub fn tensor_by_name(&self, name: &str) -> Option<TensorView<'_>> {
            self.tensors().find(|t| t.name() == name)
        }

        fn view(&self, index: usize) -> TensorView<'_> {
            let t = &self.parsed.tensors[index];
            TensorView {
                name: &self.parsed.strings[t.name.clone()],
                dtype: t.dtype,
                shape: &t.shape[..t.ndim],
                bytes: &self.body()[t.data.clone()],
            }
        }

        /// A new DXO of `data_kind` (no meta) whose tensors are this message's, viewed where
        /// they lie: send it on to answer or forward them without copying them first.
        pub fn tensors_dxo(&self, data_kind: DataKind) -> Result<Dxo<'_>, DxoError> {
            self.tensors().try_fold(Dxo::new(data_kind), |dxo, t| {
                dxo.with_tensor_bytes(t.name(), t.dtype(), t.shape(), t.bytes())
            })
        }
    };
}

/// The receiver's reusable buffer and the slot an [`OwnedMessage`] gives its buffer back to.
pub(super) struct Buffers<'c> {
    pub(super) assembly: &'c mut AlignedBuf,
    pub(super) returned: &'c Arc<Mutex<AlignedBuf>>,
}

impl Buffers<'_> {
    /// Makes the reusable buffer hold `len` bytes: the receiver's own, or the one an owned
    /// message gave back if that is larger, or a new map if neither is large enough. Returns
    /// whether the buffer is new (its pages not yet faulted in).
    pub(super) fn ready(&mut self, len: usize) -> std::io::Result<bool> {
        if self.assembly.capacity() < len {
            let mut given_back = self.returned.lock().unwrap_or_else(|e| e.into_inner());
            if given_back.capacity() > self.assembly.capacity() {
                std::mem::swap(self.assembly, &mut *given_back);
            }
        }
        let fresh = self.assembly.capacity() < len;
        self.assembly.reset(len)?;
        Ok(fresh)
    }

    /// The reusable buffer as an owned message's, to come back through `returned`.
    fn take(&mut self) -> (AlignedBuf, Weak<Mutex<AlignedBuf>>) {
        (std::mem::take(self.assembly), Arc::downgrade(self.returned))
    }
}

/// Where a received message's bytes are.
pub(super) enum Storage<'c> {
    /// In the ring, viewed in place until the message is dropped or released; the buffers
    /// are where [`Message::into_owned`] copies it.
    Ring(Option<ReadGrant<'c>>, Buffers<'c>),
    /// In the receiver's reassembly buffer.
    Assembled(Buffers<'c>),
    /// In the caller's buffer ([`FrameReceiver::recv_into`]).
    Caller(&'c [u8]),
}
/// A received message. Its tensors can be viewed in place; dropping it (or
/// [`Message::release`]) frees its ring space.
pub struct Message<'c> {
    pub(super) storage: Storage<'c>,
    pub(super) kind: MessageKind,
    pub(super) sequence: u64,
    pub(super) parsed: ParsedBody,
    /// Where the parsed tensor table and strings go back to when the message is dropped.
    pub(super) spare: &'c mut Scratch,
}
impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("kind", &self.kind)
            .field("sequence", &self.sequence)
            .field("in_ring", &matches!(self.storage, Storage::Ring(..)))
            .finish()
    }
}

impl<'c> Message<'c> {
    pub(super) fn body(&self) -> &[u8] {
        match &self.storage {
            Storage::Ring(Some(grant), _) => &grant.as_slice()[FRAGMENT_HEADER_LEN..],
            Storage::Ring(None, _) => &[],
            Storage::Assembled(buffers) => buffers.assembly.as_slice(),
            Storage::Caller(body) => body,
        }
    }

    received_accessors!();

    /// Whether the message is viewed in place in the ring (it arrived whole) rather than
    /// reassembled from fragments.
    pub fn is_in_ring(&self) -> bool {
        matches!(self.storage, Storage::Ring(..))
    }

    /// Copies the whole message out into an owned value (for keeping it past the ring).
    pub fn to_owned_message(&self) -> std::io::Result<OwnedMessage> {
        let body = self.body();
        let mut buf = AlignedBuf::zeroed(body.len())?;
        buf.as_mut_slice().copy_from_slice(body);
        Ok(OwnedMessage {
            body: OwnedBody::Buf(buf),
            kind: self.kind,
            sequence: self.sequence,
            parsed: self.parsed.clone(),
            give_back: None,
        })
    }

    /// Turns the message into an owned value. A reassembled message keeps its buffer (no
    /// copy); a message in the ring is copied out into the receiver's reusable buffer and its
    /// ring space freed. Either way the receiver's next message that needs a buffer gets a new
    /// one, or this one back once the owned message is dropped (so a receiver whose owned
    /// messages are dropped in turn faults in no new pages).
    pub fn into_owned(mut self) -> std::io::Result<OwnedMessage> {
        let parsed = std::mem::replace(&mut self.parsed, ParsedBody::empty());
        let (body, give_back) = match &mut self.storage {
            Storage::Assembled(buffers) => buffers.take(),
            Storage::Ring(grant, buffers) => {
                let bytes = grant
                    .as_ref()
                    .map_or(&[][..], |g| &g.as_slice()[FRAGMENT_HEADER_LEN..]);
                let fresh = buffers.ready(bytes.len())?;
                let out = buffers.assembly.as_mut_slice();
                if fresh {
                    // One batch instead of a fault per page inside the copy.
                    crate::sys::populate_write(out)?;
                }
                let streaming = out.len() as u64 >= crate::stream::NON_TEMPORAL_MIN;
                crate::stream::copy_out(out, bytes, streaming);
                if let Some(grant) = grant.take() {
                    grant.release();
                }
                buffers.take()
            }
            Storage::Caller(_) => {
                self.parsed = parsed;
                return self.to_owned_message();
            }
        };
        Ok(OwnedMessage {
            body: OwnedBody::Buf(body),
            kind: self.kind,
            sequence: self.sequence,
            parsed,
            give_back: Some(give_back),
        })
    }

    /// Turns the message into an owned value without copying it when it can: a message that
    /// arrived whole stays in the ring, held ([`crate::ring::ReadGrant::hold`]) until the owned
    /// message and every clone of it are dropped, if at least `keep_free` bytes of the ring
    /// stay free for the records behind it; otherwise as [`Message::into_owned`].
    ///
    /// A held message keeps the sender from reusing its ring space: the sender's next message
    /// waits for room once the ring is full of held messages.
    pub fn into_owned_in_place(mut self, keep_free: u64) -> std::io::Result<OwnedMessage> {
        let Storage::Ring(grant, _) = &mut self.storage else {
            return self.into_owned();
        };
        let Some(taken) = grant.take() else {
            return self.into_owned();
        };
        match taken.hold(keep_free) {
            Ok(hold) => Ok(OwnedMessage {
                body: OwnedBody::Held(Arc::new(hold)),
                kind: self.kind,
                sequence: self.sequence,
                parsed: std::mem::replace(&mut self.parsed, ParsedBody::empty()),
                give_back: None,
            }),
            Err(refused) => {
                *grant = Some(refused);
                self.into_owned()
            }
        }
    }

    /// Frees the message's ring space now (dropping it does the same).
    pub fn release(mut self) {
        self.release_grant();
    }

    pub(super) fn release_grant(&mut self) {
        if let Storage::Ring(grant, _) = &mut self.storage {
            if let Some(grant) = grant.take() {
                grant.release();
            }
        }
    }
}

impl Drop for Message<'_> {
    fn drop(&mut self) {
        self.release_grant();
        let parsed = std::mem::replace(&mut self.parsed, ParsedBody::empty());
        // `into_owned` leaves the placeholder behind (no body prefix): nothing to keep then.
        self.spare.parsed = (parsed.prefix_len != 0).then_some(parsed);
    }
}

/// Where an [`OwnedMessage`]'s bytes are.
#[derive(Clone, Debug)]
pub(super) enum OwnedBody {
    /// A buffer of its own (copied out, or the reassembly buffer it was built in).
    Buf(AlignedBuf),
    /// Still in the ring, held until the last clone is dropped.
    Held(Arc<RingHold>),
}

/// A message that owns its bytes, or holds them in the ring: the same accessors as
/// [`Message`], valid for as long as it lives.
#[derive(Clone, Debug)]
pub struct OwnedMessage {
    pub(super) body: OwnedBody,
    pub(super) kind: MessageKind,
    pub(super) sequence: u64,
    pub(super) parsed: ParsedBody,
    /// The receiver's slot for a reassembly buffer to reuse.
    pub(super) give_back: Option<Weak<Mutex<AlignedBuf>>>,
}

impl Drop for OwnedMessage {
    fn drop(&mut self) {
        let Some(slot) = self.give_back.as_ref().and_then(Weak::upgrade) else {
            return;
        };
        let OwnedBody::Buf(body) = &mut self.body else {
            return;
        };
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if body.capacity() > slot.capacity() {
            *slot = std::mem::take(body);
        }
    }
}

impl OwnedMessage {
    pub(super) fn body(&self) -> &[u8] {
        match &self.body {
            OwnedBody::Buf(buf) => buf.as_slice(),
            OwnedBody::Held(hold) => &hold.as_slice()[FRAGMENT_HEADER_LEN..],
        }
    }

    /// Whether the message is read in place in the ring ([`Message::into_owned_in_place`])
    /// rather than from a buffer of its own.
    pub fn is_in_ring(&self) -> bool {
        matches!(self.body, OwnedBody::Held(_))
    }

    received_accessors!();
}

/// A tensor of a received message, viewed where it lies (ring or buffer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TensorView<'a> {
    pub(super) name: &'a str,
    pub(super) dtype: DType,
    pub(super) shape: &'a [u64],
    pub(super) bytes: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// The name.
    pub fn name(&self) -> &'a str {
        self.name
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The shape.
    pub fn shape(&self) -> &'a [u64] {
        self.shape
    }
    /// The raw bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }
    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The elements as `&[T]`, in place; the dtype must be `T`'s. (For bool tensors use
    /// [`TensorView::to_bools`].)
    pub fn as_slice<T: Element + FromBytes + KnownLayout>(&self) -> Result<&'a [T], ViewError> {
        if self.dtype != T::DTYPE {
            return Err(ViewError::WrongDType {
                actual: self.dtype,
                asked: T::DTYPE,
            });
        }
        <[T]>::ref_from_bytes(self.bytes).map_err(|_| ViewError::Misaligned)
    }

    /// A bool tensor's elements, copied out after checking every byte is 0 or 1.
    ///
    /// Not a view in place: a `&[bool]` over ring bytes that a faulty peer could overwrite
    /// with another value would be undefined behaviour; a copy cannot be changed under us.
    /// The raw bytes are available in place through [`TensorView::bytes`].
    pub fn to_bools(&self) -> Result<Vec<bool>, ViewError> {
        if self.dtype != DType::Bool {
            return Err(ViewError::WrongDType {
                actual: self.dtype,
                asked: DType::Bool,
            });
        }
        self.bytes
            .iter()
            .map(|&b| match b {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(ViewError::InvalidBool),
            })
            .collect()
    }

    /// Copies the elements into a caller-provided slice of exactly [`TensorView::len`]
    /// elements.
    pub fn copy_to<T: Element + FromBytes + KnownLayout>(
        &self,
        out: &mut [T],
    ) -> Result<(), ViewError> {
        if self.dtype != T::DTYPE {
            return Err(ViewError::WrongDType {
                actual: self.dtype,
                asked: T::DTYPE,
            });
        }
        let out = out.as_mut_bytes();
        if out.len() != self.bytes.len() {
            return Err(ViewError::Misaligned);
        }
        out.copy_from_slice(self.bytes);
        Ok(())
    }

    /// Copies the elements into a new vector.
    pub fn to_vec<T: Element + FromBytes + KnownLayout>(&self) -> Result<Vec<T>, ViewError> {
        if self.dtype != T::DTYPE {
            return Err(ViewError::WrongDType {
                actual: self.dtype,
                asked: T::DTYPE,
            });
        }
        <[T]>::ref_from_bytes(self.bytes)
            .map(|s| s.to_vec())
            .or_else(|_| {
                // Unaligned (only possible for caller-built views): copy element by element.
                let mut v = vec![T::new_zeroed(); self.len()];
                v.as_mut_bytes().copy_from_slice(self.bytes);
                Ok(v)
            })
    }
}
