//! Encoding a message into ring records: body layout, prefix, fragmentation ([`FrameSender`]).

#[allow(unused_imports)]
use super::*;

/// A tensor of a body being built: borrowed description, no copies.
#[derive(Clone, Copy, Debug)]
pub(super) struct TensorDesc<'a> {
    pub(super) name: &'a str,
    pub(super) dtype: DType,
    pub(super) shape: &'a [u64],
    pub(super) len: u64,
}

/// Where the parts of one message body go (offsets from the body start), computed before
/// anything is written.
#[derive(Debug)]
pub(super) struct BodyLayout {
    /// The meta dictionary, encoded (empty if none).
    pub(super) meta: Vec<u8>,
    pub(super) table_offset: usize,
    pub(super) names_offset: usize,
    pub(super) names_len: usize,
    /// Start of the data region; also the length of the prefix (headers, strings, meta,
    /// table, names, padding).
    pub(super) data_offset: u64,
    pub(super) opaque: Range<u64>,
    pub(super) total: u64,
}

/// The data offset of each tensor, in order: after the opaque bytes, each on a
/// [`TENSOR_ALIGN`] boundary after the previous one's end. `None` on overflow.
pub(super) fn tensor_starts<'t>(
    opaque_end: u64,
    tensors: &'t [TensorDesc<'t>],
) -> impl Iterator<Item = Option<u64>> + 't {
    let mut cursor = Some(opaque_end);
    tensors.iter().map(move |t| {
        let start = align_to(cursor?, TENSOR_ALIGN as u64)?;
        cursor = start.checked_add(t.len);
        cursor.map(|_| start)
    })
}

/// Meta entries a sender sets on top of a DXO's own meta when it encodes it (the protocol's
/// `data_kind` and round headers), so that they need no copy of the DXO. Sorted by key, keys
/// distinct; an entry replaces the DXO's entry of the same key.
pub(crate) type ExtraMeta<'m> = &'m [(&'m str, Value)];

/// Encodes `meta` with `extra` set on top as one JSON object: the bytes
/// `serde_json::to_vec` gives for the merged map (keys in order, compact), empty when both
/// are empty.
pub(super) fn encode_meta(meta: Option<&Map<String, Value>>, extra: ExtraMeta<'_>) -> Vec<u8> {
    debug_assert!(
        extra.windows(2).all(|w| w[0].0 < w[1].0),
        "extra meta sorted"
    );
    let empty = Map::new();
    let meta = meta.unwrap_or(&empty);
    // A map of JSON values always serialises (its keys are strings, its numbers finite).
    if extra.is_empty() && meta.is_empty() {
        return Vec::new();
    }
    if extra.is_empty() {
        return serde_json::to_vec(meta).unwrap_or_default();
    }
    let mut out = Vec::with_capacity(64);
    out.push(b'{');
    let mut own = meta.iter().peekable();
    let mut added = extra.iter().peekable();
    let put = |out: &mut Vec<u8>, key: &str, value: &Value| {
        if out.len() > 1 {
            out.push(b',');
        }
        // Writing into a Vec cannot fail, and a string key and a JSON value always serialise.
        let _ = serde_json::to_writer(&mut *out, key);
        out.push(b':');
        let _ = serde_json::to_writer(&mut *out, value);
    };
    loop {
        match (own.peek(), added.peek()) {
            (Some((k, _)), Some((a, _))) if k.as_str() == *a => {
                own.next();
            }
            (Some((k, v)), Some((a, _))) if k.as_str() < *a => {
                put(&mut out, k, v);
                own.next();
            }
            (_, Some((a, v))) => {
                put(&mut out, a, v);
                added.next();
            }
            (Some((k, v)), None) => {
                put(&mut out, k, v);
                own.next();
            }
            (None, None) => break,
        }
    }
    out.push(b'}');
    out
}

pub(super) fn layout_body(
    envelope: &Envelope<'_>,
    meta: Option<&Map<String, Value>>,
    extra_meta: ExtraMeta<'_>,
    tensors: &[TensorDesc<'_>],
    opaque_len: u64,
) -> Result<BodyLayout, SendError> {
    let too_big = |part| SendError::TooLargeForFormat { part };
    let meta = encode_meta(meta, extra_meta);
    u32::try_from(envelope.task_id.len()).map_err(|_| too_big(BodyPart::TaskId))?;
    u32::try_from(envelope.task_name.len()).map_err(|_| too_big(BodyPart::TaskName))?;
    u32::try_from(meta.len()).map_err(|_| too_big(BodyPart::Meta))?;
    u32::try_from(tensors.len()).map_err(|_| too_big(BodyPart::TensorCount))?;
    let names_len: usize = tensors.iter().map(|t| t.name.len()).sum();
    u32::try_from(names_len).map_err(|_| too_big(BodyPart::TensorNames))?;

    let strings_end =
        BODY_HEADER_LEN + envelope.task_id.len() + envelope.task_name.len() + meta.len();
    let table_offset = strings_end.next_multiple_of(8);
    let names_offset = table_offset + tensors.len() * TENSOR_ENTRY_LEN;
    let data_offset = align_to((names_offset + names_len) as u64, TENSOR_ALIGN as u64)
        .ok_or_else(|| too_big(BodyPart::Body))?;
    let opaque_end = data_offset
        .checked_add(opaque_len)
        .ok_or_else(|| too_big(BodyPart::Opaque))?;
    let mut total = opaque_end;
    for (tensor, start) in tensors.iter().zip(tensor_starts(opaque_end, tensors)) {
        total = start
            .and_then(|s| s.checked_add(tensor.len))
            .ok_or_else(|| too_big(BodyPart::Body))?;
    }
    Ok(BodyLayout {
        meta,
        table_offset,
        names_offset,
        names_len,
        data_offset,
        opaque: data_offset..opaque_end,
        total,
    })
}

/// Writes a body's prefix — body header, task id and name, meta, tensor table, names, and
/// zero padding up to the data region — into `out` (exactly `layout.data_offset` bytes,
/// zeroed by the caller: the padding between the parts is left as it is).
pub(super) fn write_prefix(
    layout: &BodyLayout,
    envelope: &Envelope<'_>,
    data_kind: Option<DataKind>,
    tensors: &[TensorDesc<'_>],
    out: &mut [u8],
) {
    let header = BodyHeader {
        rc: envelope.rc.code(),
        data_kind: data_kind.map_or(0, DataKind::code),
        task_id_len: envelope.task_id.len() as u32,
        task_name_len: envelope.task_name.len() as u32,
        meta_len: layout.meta.len() as u32,
        tensor_count: tensors.len() as u32,
        names_len: layout.names_len as u32,
        flags: if data_kind.is_some() {
            BODY_FLAG_HAS_DXO
        } else {
            0
        },
        opaque_len: layout.opaque.end - layout.opaque.start,
        data_offset: layout.data_offset,
        data_len: layout.total - layout.data_offset,
        reply_to: envelope.reply_to,
    };
    out[..BODY_HEADER_LEN].copy_from_slice(header.as_bytes());
    let mut at = BODY_HEADER_LEN;
    for part in [
        envelope.task_id.as_bytes(),
        envelope.task_name.as_bytes(),
        &layout.meta,
    ] {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    let mut name_cursor = 0usize;
    let starts = tensor_starts(layout.opaque.end, tensors);
    for (i, (tensor, start)) in tensors.iter().zip(starts).enumerate() {
        let mut shape = [0u64; MAX_DIMS];
        shape[..tensor.shape.len()].copy_from_slice(tensor.shape);
        let entry = TensorEntry {
            // `layout_body` checked every start for overflow.
            data_offset: start.unwrap_or_default(),
            data_len: tensor.len,
            name_offset: name_cursor as u32,
            name_len: tensor.name.len() as u16,
            dtype: tensor.dtype.code() as u8,
            ndim: tensor.shape.len() as u8,
            reserved0: 0,
            shape,
        };
        let entry_at = layout.table_offset + i * TENSOR_ENTRY_LEN;
        out[entry_at..entry_at + TENSOR_ENTRY_LEN].copy_from_slice(entry.as_bytes());
        let name_at = layout.names_offset + name_cursor;
        out[name_at..name_at + tensor.name.len()].copy_from_slice(tensor.name.as_bytes());
        name_cursor += tensor.name.len();
    }
}

/// Writes bytes `[start, start + out.len())` of a body: the layout's prefix, then the given
/// pieces (opaque bytes and tensors) at their offsets, zeros in between.
pub(super) fn write_body_range(prefix: &[u8], pieces: &[(u64, &[u8])], start: u64, out: &mut [u8]) {
    let end = start + out.len() as u64;
    let mut filled = start;
    let fill_to = |out: &mut [u8], from: u64, to: u64, src: Option<&[u8]>| {
        let (a, b) = ((from - start) as usize, (to - start) as usize);
        match src {
            Some(src) => out[a..b].copy_from_slice(src),
            None => out[a..b].fill(0),
        }
    };
    let prefix_len = prefix.len() as u64;
    if filled < prefix_len {
        let to = end.min(prefix_len);
        fill_to(out, filled, to, Some(&prefix[filled as usize..to as usize]));
        filled = to;
    }
    let first = pieces.partition_point(|(offset, bytes)| offset + bytes.len() as u64 <= filled);
    for &(offset, bytes) in &pieces[first..] {
        if filled >= end {
            break;
        }
        if offset >= end {
            break;
        }
        if offset > filled {
            fill_to(out, filled, offset, None);
            filled = offset;
        }
        let to = end.min(offset + bytes.len() as u64);
        if to > filled {
            let src = &bytes[(filled - offset) as usize..(to - offset) as usize];
            fill_to(out, filled, to, Some(src));
            filled = to;
        }
    }
    if filled < end {
        fill_to(out, filled, end, None);
    }
}

/// Sends messages on a ring: assigns sequence numbers, fragments large messages, and lends
/// ring space for zero-copy sends.
#[derive(Debug, Default)]
pub struct FrameSender {
    pub(super) next_sequence: u64,
    /// Whether each fragment carries a CRC32C of its payload.
    pub(super) checksum: bool,
}

impl FrameSender {
    /// A sender whose first message gets sequence number 1.
    pub fn new() -> FrameSender {
        FrameSender {
            next_sequence: 1,
            checksum: false,
        }
    }

    /// The same sender, with a CRC32C of every fragment's payload in its header (`true`) or
    /// without (`false`, the default). The receiver checks it whenever it is present and
    /// refuses a message whose bytes changed in shared memory after they were sent
    /// ([`FragmentProblem::Checksum`]); it costs one more pass over the bytes on each side.
    #[must_use]
    pub fn with_checksum(mut self, checksum: bool) -> FrameSender {
        self.checksum = checksum;
        self
    }

    /// The sequence number the next message sent will get (a protocol can expect its answer
    /// before sending).
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence.max(1)
    }

    /// Whether fragments carry a checksum ([`FrameSender::with_checksum`]).
    pub fn checksum(&self) -> bool {
        self.checksum
    }

    pub(super) fn take_sequence(&mut self) -> u64 {
        let sequence = self.next_sequence.max(1);
        self.next_sequence = sequence.wrapping_add(1);
        sequence
    }

    /// Sends a message, copying the DXO's tensors from the caller's memory into the ring.
    /// A message that fits in one ring record is sent whole (the receiver can view it in
    /// place); a larger one as fragments, while the receiver drains them. `deadline` bounds
    /// the whole message. Returns its sequence number.
    pub fn send(
        &mut self,
        producer: &mut Producer,
        envelope: &Envelope<'_>,
        dxo: Option<&Dxo<'_>>,
        deadline: Option<Instant>,
    ) -> Result<u64, SendError> {
        self.send_cancellable(producer, envelope, dxo, deadline, None)
    }

    /// [`FrameSender::send`] that asks `cancel.0()` before each fragment and at least every
    /// `cancel.1` while waiting for ring space, and stops with [`SendError::Cancelled`] when it
    /// answers `true` (an abort while a large message streams to a slow or stalled receiver).
    pub fn send_cancellable(
        &mut self,
        producer: &mut Producer,
        envelope: &Envelope<'_>,
        dxo: Option<&Dxo<'_>>,
        deadline: Option<Instant>,
        cancel: Option<(&dyn Fn() -> bool, Duration)>,
    ) -> Result<u64, SendError> {
        self.send_with_meta(producer, envelope, dxo, &[], deadline, cancel)
    }

    /// [`FrameSender::send_cancellable`] of `dxo` with the meta entries `extra_meta` set on
    /// top of its own (as if added to a copy of it).
    pub(crate) fn send_with_meta(
        &mut self,
        producer: &mut Producer,
        envelope: &Envelope<'_>,
        dxo: Option<&Dxo<'_>>,
        extra_meta: ExtraMeta<'_>,
        deadline: Option<Instant>,
        cancel: Option<(&dyn Fn() -> bool, Duration)>,
    ) -> Result<u64, SendError> {
        let descs: Vec<TensorDesc<'_>> = dxo
            .map(|d| d.tensors.iter().map(TensorRef::desc).collect())
            .unwrap_or_default();
        let opaque = dxo.and_then(|d| d.opaque).unwrap_or(&[]);
        let layout = layout_body(
            envelope,
            dxo.map(|d| &d.meta),
            extra_meta,
            &descs,
            opaque.len() as u64,
        )?;
        let mut prefix = vec![0u8; layout.data_offset as usize];
        write_prefix(
            &layout,
            envelope,
            dxo.map(|d| d.data_kind),
            &descs,
            &mut prefix,
        );
        let mut pieces: Vec<(u64, &[u8])> = Vec::with_capacity(descs.len() + 1);
        if !opaque.is_empty() {
            pieces.push((layout.opaque.start, opaque));
        }
        if let Some(d) = dxo {
            let starts = tensor_starts(layout.opaque.end, &descs);
            for (t, start) in d.tensors.iter().zip(starts) {
                if !t.bytes.is_empty() {
                    pieces.push((start.unwrap_or_default(), t.bytes));
                }
            }
        }
        let sequence = self.take_sequence();
        let max_fragment = (producer.max_record() - FRAGMENT_HEADER_LEN) as u64;
        let fragment_len = if layout.total <= max_fragment {
            layout.total
        } else {
            (crate::stream::default_chunk(producer.capacity()) as u64)
                .clamp(TENSOR_ALIGN as u64, max_fragment)
        };
        let fragmented = fragment_len < layout.total;
        // Fragments of a large message keep the data in flight small and in a cache-sized
        // part of the ring, as streams do (see `Producer::reserve_within`); a whole message
        // may use all of it.
        let window = if fragmented {
            crate::stream::default_window(producer.capacity())
        } else {
            u64::MAX
        };
        let mut offset = 0u64;
        let mut index = 0u32;
        loop {
            let len = fragment_len.min(layout.total - offset);
            let mut flags = 0;
            if offset == 0 {
                flags |= FLAG_FIRST;
            }
            if offset + len == layout.total {
                flags |= FLAG_LAST;
            }
            if self.checksum {
                flags |= FLAG_CHECKSUM;
            }
            let header = FragmentHeader::new(
                envelope.kind,
                flags,
                sequence,
                index,
                layout.total,
                offset..offset + len,
                envelope.epoch,
            );
            let record = FRAGMENT_HEADER_LEN + len as usize;
            let mut grant = match cancel {
                None => producer.reserve_within(record, window, deadline)?,
                Some((cancelled, slice)) => loop {
                    if cancelled() {
                        return Err(SendError::Cancelled);
                    }
                    let now = Instant::now();
                    let slice_end = deadline.map_or(now + slice, |d| d.min(now + slice));
                    match producer.reserve_within(record, window, Some(slice_end)) {
                        Err(ReserveError::Timeout)
                            if deadline.is_none_or(|d| Instant::now() < d) => {}
                        other => break other?,
                    }
                },
            };
            let slot = grant.as_mut_slice();
            slot[..FRAGMENT_HEADER_LEN].copy_from_slice(header.as_bytes());
            write_body_range(&prefix, &pieces, offset, &mut slot[FRAGMENT_HEADER_LEN..]);
            if self.checksum {
                seal(slot);
            }
            grant.commit();
            offset += len;
            index = index.wrapping_add(1);
            if offset == layout.total {
                return Ok(sequence);
            }
        }
    }

    /// Reserves ring space for a whole message whose tensors the caller then fills in place
    /// (zero copies on the send side), and writes its headers, meta and tensor table. The
    /// message must fit in one ring record. Nothing is visible to the receiver until
    /// [`Loan::commit`]; dropping the loan abandons it. To send the same layout repeatedly,
    /// [`FrameSender::prepare`] it once and use [`FrameSender::loan_prepared`].
    pub fn loan<'p>(
        &mut self,
        producer: &'p mut Producer,
        envelope: &Envelope<'_>,
        spec: &LoanSpec,
        deadline: Option<Instant>,
    ) -> Result<Loan<'p>, LoanError> {
        let prepared = FrameSender::prepare(envelope, spec)?;
        self.loan_prepared(producer, &prepared, deadline)
    }

    /// Checks a loan's spec and lays out its message once: headers, meta, tensor table and
    /// names are encoded here, so that each [`FrameSender::loan_prepared`] only reserves ring
    /// space and copies them.
    pub fn prepare(envelope: &Envelope<'_>, spec: &LoanSpec) -> Result<PreparedLoan, LoanError> {
        let mut descs = Vec::with_capacity(spec.tensors.len());
        for (name, dtype, shape) in &spec.tensors {
            let len = check_tensor_spec(name, *dtype, shape, None)?;
            descs.push(TensorDesc {
                name,
                dtype: *dtype,
                shape,
                len,
            });
        }
        if let Some((_, second)) = first_duplicate(&descs, |d| d.name.as_bytes()) {
            return Err(DxoError::DuplicateName(descs[second].name.to_string()).into());
        }
        if spec.opaque_len > 0 && spec.data_kind != DataKind::AppDefined {
            return Err(DxoError::OpaqueNotAppDefined(spec.data_kind).into());
        }
        let layout = layout_body(
            envelope,
            Some(&spec.meta),
            &[],
            &descs,
            spec.opaque_len as u64,
        )?;
        let mut prefix = vec![0u8; layout.data_offset as usize];
        write_prefix(&layout, envelope, Some(spec.data_kind), &descs, &mut prefix);
        Ok(PreparedLoan {
            kind: envelope.kind,
            epoch: envelope.epoch,
            prefix,
            total: layout.total,
            opaque: layout.opaque,
            table: layout.table_offset,
            names: layout.names_offset,
            count: descs.len(),
        })
    }

    /// Lends ring space for one message of a prepared layout (see [`FrameSender::loan`]).
    pub fn loan_prepared<'p>(
        &mut self,
        producer: &'p mut Producer,
        prepared: &PreparedLoan,
        deadline: Option<Instant>,
    ) -> Result<Loan<'p>, LoanError> {
        let needed = prepared.total + FRAGMENT_HEADER_LEN as u64;
        if needed > producer.max_record() as u64 {
            return Err(SendError::TooLargeForLoan {
                needed,
                max: producer.max_record(),
            }
            .into());
        }
        let grant = producer
            .reserve(needed as usize, deadline)
            .map_err(SendError::from)?;
        let sequence = self.take_sequence();
        Ok(Loan::new(grant, prepared, sequence, self.checksum))
    }

    /// [`FrameSender::loan_prepared`], returning a [`DetachedLoan`] that does not borrow the
    /// producer (keep the producer beside it; every access takes it). `cancel` is asked at
    /// least every `cancel.1` while waiting for ring space, and a `true` answer ends the wait
    /// with [`SendError::Cancelled`].
    pub fn loan_detached(
        &mut self,
        producer: &mut Producer,
        prepared: &PreparedLoan,
        deadline: Option<Instant>,
        cancel: Option<(&dyn Fn() -> bool, Duration)>,
    ) -> Result<DetachedLoan, LoanError> {
        let ticket = self.ticket();
        DetachedLoan::reserve(producer, prepared, ticket, deadline, cancel)
    }

    /// Takes the sequence number (and checksum setting) of a message to be sent later
    /// without this sender, e.g. a [`DetachedLoan::reserve`] made while the sender is in use
    /// elsewhere. A ticket that is never used leaves a gap in the sequence, which receivers
    /// accept.
    pub fn ticket(&mut self) -> SendTicket {
        SendTicket {
            sequence: self.take_sequence(),
            checksum: self.checksum,
        }
    }

    /// Sends a copied record again ([`DetachedLoan::copy_committed`]) as a new message (a new
    /// sequence number) addressed to receiver incarnation `epoch`. `deadline` and `cancel` as
    /// for [`FrameSender::loan_detached`]. Returns the new sequence number.
    pub fn resend(
        &mut self,
        producer: &mut Producer,
        copy: &mut RecordCopy,
        epoch: u64,
        deadline: Option<Instant>,
        cancel: Option<(&dyn Fn() -> bool, Duration)>,
    ) -> Result<u64, SendError> {
        let reservation = reserve_cancellable(producer, copy.record.len(), deadline, cancel)?;
        let sequence = self.take_sequence();
        let (head, _) = copy.record.split_at_mut(FRAGMENT_HEADER_LEN);
        // Any 64 bytes are a header value; the copy always holds one (`RecordCopy`'s invariant).
        if let Ok(mut header) = FragmentHeader::read_from_bytes(head) {
            header.sequence = sequence;
            header.epoch = epoch;
            head.copy_from_slice(header.as_bytes());
        }
        let record = producer
            .reservation_mut(&reservation)
            .map_err(|_| SendError::Cancelled)?;
        record.copy_from_slice(&copy.record);
        producer
            .commit_reservation(reservation)
            .map_err(|_| SendError::Cancelled)?;
        Ok(sequence)
    }
}

/// A message's sequence number and checksum setting, taken from a [`FrameSender`] by
/// [`FrameSender::ticket`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendTicket {
    pub(super) sequence: u64,
    pub(super) checksum: bool,
}

impl SendTicket {
    /// The sequence number the message will carry.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
}

/// Reserves a `len`-byte record, waiting until `deadline` and asking `cancel` each slice.
pub(super) fn reserve_cancellable(
    producer: &mut Producer,
    len: usize,
    deadline: Option<Instant>,
    cancel: Option<(&dyn Fn() -> bool, Duration)>,
) -> Result<Reservation, SendError> {
    let Some((cancelled, slice)) = cancel else {
        return Ok(producer.reserve_detached(len, deadline)?);
    };
    loop {
        if cancelled() {
            return Err(SendError::Cancelled);
        }
        let now = Instant::now();
        let slice_end = deadline.map_or(now + slice, |d| d.min(now + slice));
        match producer.reserve_detached(len, Some(slice_end)) {
            Err(ReserveError::Timeout) if deadline.is_none_or(|d| Instant::now() < d) => {}
            other => return Ok(other?),
        }
    }
}

/// Writes the CRC32C of a fragment record's payload into its header's `checksum` word.
pub(super) fn seal(record: &mut [u8]) {
    let crc = payload_checksum(&record[FRAGMENT_HEADER_LEN..]);
    record[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}
