//! Parsing a body the peer wrote. Everything here reads untrusted bytes: every offset, length,
//! count and string is checked against the body and the receiver's [`Limits`] before use.

#[allow(unused_imports)]
use super::*;

/// A tensor's description, parsed and checked.
#[derive(Clone, Debug)]
pub(super) struct ParsedTensor {
    pub(super) name: Range<usize>,
    pub(super) dtype: DType,
    pub(super) ndim: usize,
    pub(super) shape: [u64; MAX_DIMS],
    pub(super) data: Range<usize>,
}

/// A message body, parsed and checked; `opaque` and tensor `data` ranges index into the body
/// bytes, string ranges into `strings`.
#[derive(Clone, Debug)]
pub(super) struct ParsedBody {
    pub(super) rc: ReturnCode,
    /// From the fragment header: the agent incarnation concerned.
    pub(super) epoch: u64,
    pub(super) reply_to: u64,
    /// Body bytes before the data region.
    pub(super) prefix_len: usize,
    pub(super) data_kind: Option<DataKind>,
    /// Task id, task name and tensor names, copied out of the body and validated as UTF-8
    /// after copying: a `&str` into bytes a faulty peer could still rewrite would break
    /// `str`'s invariant. `task_id`, `task_name` and tensor `name` ranges index into it.
    pub(super) strings: String,
    pub(super) task_id: Range<usize>,
    pub(super) task_name: Range<usize>,
    pub(super) meta: Map<String, Value>,
    pub(super) opaque: Range<usize>,
    pub(super) tensors: Vec<ParsedTensor>,
}

impl ParsedBody {
    /// A placeholder left behind when a message's parse results move elsewhere (the only
    /// `ParsedBody` with `prefix_len` 0: a real body has at least its header).
    pub(super) fn empty() -> ParsedBody {
        ParsedBody {
            rc: ReturnCode::Ok,
            epoch: 0,
            reply_to: 0,
            prefix_len: 0,
            data_kind: None,
            strings: String::new(),
            task_id: 0..0,
            task_name: 0..0,
            meta: Map::new(),
            opaque: 0..0,
            tensors: Vec::new(),
        }
    }
}

pub(super) fn checked_range(
    start: u64,
    len: u64,
    within: usize,
    part: BodyPart,
) -> Result<Range<usize>, FrameError> {
    let end = start
        .checked_add(len)
        .filter(|&end| end <= within as u64)
        .ok_or(FrameError::Malformed(BodyProblem::OutOfBounds {
            part,
            start,
            len,
            body_len: within,
        }))?;
    Ok(start as usize..end as usize)
}

pub(super) fn over(what: &'static str, value: u64, max: u64) -> Result<(), FrameError> {
    if value > max {
        Err(FrameError::OverLimit { what, value, max })
    } else {
        Ok(())
    }
}

/// Parses `body`, or, when its prefix (everything before the data region: headers, strings,
/// meta, tensor table, names) and length are byte for byte those of the last body parsed in
/// full, hands back that parse: a sender repeating the same layout (the common case: the same
/// model every round) costs a compare instead of a parse. The parse depends only on the prefix
/// and the body length, so this is the same check, memoised.
pub(super) fn parse_cached(
    body: &[u8],
    limits: &Limits,
    spare: &mut Scratch,
) -> Result<ParsedBody, FrameError> {
    let (mut tensors, mut strings) = (Vec::new(), String::new());
    if let Some(last) = spare.parsed.take() {
        let prefix = &spare.prefix[..];
        if body.len() == spare.len && body.get(..prefix.len()) == Some(prefix) {
            return Ok(last);
        }
        (tensors, strings) = (last.tensors, last.strings);
    }
    spare.prefix.clear();
    let parsed = parse_body(body, limits, tensors, strings)?;
    spare.prefix.extend_from_slice(&body[..parsed.prefix_len]);
    spare.len = body.len();
    Ok(parsed)
}

/// Parses and checks a whole message body (untrusted bytes).
///
/// `tensors` and `strings` are allocations to reuse (their contents are discarded).
pub(super) fn parse_body(
    body: &[u8],
    limits: &Limits,
    mut tensors: Vec<ParsedTensor>,
    strings: String,
) -> Result<ParsedBody, FrameError> {
    let mut text = strings.into_bytes();
    text.clear();
    // Copies `body[range]` to the end of `text` and checks the copy is UTF-8.
    let mut copy_str = |range: Range<usize>, part: BodyPart| {
        let start = text.len();
        text.extend_from_slice(&body[range]);
        std::str::from_utf8(&text[start..])
            .map_err(|_| FrameError::Malformed(BodyProblem::NotUtf8 { part }))?;
        Ok::<_, FrameError>(start..text.len())
    };
    let header = BodyHeader::read_from_prefix(body)
        .map_err(|_| {
            FrameError::Malformed(BodyProblem::OutOfBounds {
                part: BodyPart::Header,
                start: 0,
                len: BODY_HEADER_LEN as u64,
                body_len: body.len(),
            })
        })?
        .0;
    let rc = ReturnCode::from_code(header.rc).ok_or(FrameError::Malformed(
        BodyProblem::UnknownReturnCode { code: header.rc },
    ))?;
    let has_dxo = header.flags & BODY_FLAG_HAS_DXO != 0;
    if header.flags & !BODY_FLAG_HAS_DXO != 0 {
        return Err(FrameError::Malformed(BodyProblem::UnknownFlags {
            flags: header.flags,
        }));
    }
    let data_kind = if has_dxo {
        Some(
            DataKind::from_code(header.data_kind).ok_or(FrameError::Malformed(
                BodyProblem::UnknownDataKind {
                    code: header.data_kind,
                },
            ))?,
        )
    } else if header.data_kind != 0
        || header.tensor_count != 0
        || header.opaque_len != 0
        || header.meta_len != 0
    {
        return Err(FrameError::Malformed(BodyProblem::FieldsWithoutDxo));
    } else {
        None
    };
    over(
        "task id length",
        header.task_id_len.into(),
        limits.max_task_field_len.into(),
    )?;
    over(
        "task name length",
        header.task_name_len.into(),
        limits.max_task_field_len.into(),
    )?;
    over(
        "meta length",
        header.meta_len.into(),
        limits.max_meta_len.into(),
    )?;
    over(
        "tensor count",
        header.tensor_count.into(),
        limits.max_tensors.into(),
    )?;
    over(
        "tensor names length",
        header.names_len.into(),
        u64::from(limits.max_name_len) * u64::from(header.tensor_count),
    )?;

    let len = body.len();
    let task_id = checked_range(
        BODY_HEADER_LEN as u64,
        header.task_id_len.into(),
        len,
        BodyPart::TaskId,
    )?;
    let task_name = checked_range(
        task_id.end as u64,
        header.task_name_len.into(),
        len,
        BodyPart::TaskName,
    )?;
    let meta_range = checked_range(
        task_name.end as u64,
        header.meta_len.into(),
        len,
        BodyPart::Meta,
    )?;
    let task_id = copy_str(task_id, BodyPart::TaskId)?;
    let task_name = copy_str(task_name, BodyPart::TaskName)?;
    let table_offset = (meta_range.end as u64).next_multiple_of(8);
    let table_len = u64::from(header.tensor_count) * TENSOR_ENTRY_LEN as u64;
    let table = checked_range(table_offset, table_len, len, BodyPart::TensorTable)?;
    let names = checked_range(
        table.end as u64,
        header.names_len.into(),
        len,
        BodyPart::TensorNames,
    )?;
    let data_offset = align_to(names.end as u64, TENSOR_ALIGN as u64).unwrap_or(u64::MAX);
    if header.data_offset != data_offset {
        return Err(FrameError::Malformed(BodyProblem::DataOffset {
            found: header.data_offset,
            expected: data_offset,
        }));
    }
    if data_offset.checked_add(header.data_len) != Some(len as u64) {
        return Err(FrameError::Malformed(BodyProblem::DataEnd {
            offset: header.data_offset,
            len: header.data_len,
            body_len: len,
        }));
    }
    let opaque = checked_range(data_offset, header.opaque_len, len, BodyPart::Opaque)?;
    if !opaque.is_empty() && data_kind != Some(DataKind::AppDefined) {
        return Err(FrameError::Malformed(BodyProblem::OpaqueNotAppDefined));
    }

    let meta = if meta_range.is_empty() {
        Map::new()
    } else {
        serde_json::from_slice::<Map<String, Value>>(&body[meta_range]).map_err(|e| {
            FrameError::Malformed(BodyProblem::MetaNotJsonObject {
                line: e.line(),
                column: e.column(),
            })
        })?
    };

    tensors.clear();
    tensors.reserve(header.tensor_count as usize);
    let mut previous_end = opaque.end as u64;
    for i in 0..header.tensor_count as usize {
        let at = table.start + i * TENSOR_ENTRY_LEN;
        let entry =
            TensorEntry::read_from_bytes(&body[at..at + TENSOR_ENTRY_LEN]).map_err(|_| {
                FrameError::Malformed(BodyProblem::OutOfBounds {
                    part: BodyPart::TensorTable,
                    start: at as u64,
                    len: TENSOR_ENTRY_LEN as u64,
                    body_len: len,
                })
            })?;
        let bad = |problem| FrameError::Malformed(BodyProblem::Tensor { index: i, problem });
        let dtype = u32::from(entry.dtype);
        let dtype = DType::from_code(dtype)
            .ok_or_else(|| bad(TensorProblem::UnknownDType { code: dtype }))?;
        let ndim = usize::from(entry.ndim);
        if ndim > MAX_DIMS {
            return Err(bad(TensorProblem::TooManyDims { ndim }));
        }
        if entry.shape[ndim..].iter().any(|&d| d != 0) || entry.reserved0 != 0 {
            return Err(bad(TensorProblem::ReservedWords));
        }
        let name_len = u64::from(entry.name_len);
        if name_len == 0 {
            return Err(bad(TensorProblem::EmptyName));
        }
        over("tensor name length", name_len, limits.max_name_len.into())?;
        let name = checked_range(
            u64::from(entry.name_offset),
            name_len,
            names.len(),
            BodyPart::TensorName(i),
        )?;
        let name = (name.start + names.start)..(name.end + names.start);
        let name = copy_str(name, BodyPart::TensorName(i))?;
        let expected = tensor_len(dtype, &entry.shape[..ndim]);
        if expected != Some(entry.data_len) {
            return Err(bad(TensorProblem::DataLength {
                len: entry.data_len,
                expected,
            }));
        }
        if entry.data_offset % TENSOR_ALIGN as u64 != 0 {
            return Err(bad(TensorProblem::Misaligned {
                offset: entry.data_offset,
            }));
        }
        if entry.data_offset < previous_end {
            return Err(bad(TensorProblem::Overlap {
                offset: entry.data_offset,
                previous_end,
            }));
        }
        let data = checked_range(
            entry.data_offset,
            entry.data_len,
            len,
            BodyPart::TensorData(i),
        )?;
        previous_end = data.end as u64;
        tensors.push(ParsedTensor {
            name,
            dtype,
            ndim,
            shape: entry.shape,
            data,
        });
    }
    if let Some((first, second)) = first_duplicate(&tensors, |t| &text[t.name.clone()]) {
        return Err(FrameError::Malformed(BodyProblem::DuplicateTensorName {
            first,
            second,
        }));
    }
    // Every field was checked as UTF-8 on its own, so their concatenation is UTF-8.
    let strings = String::from_utf8(text).map_err(|_| {
        FrameError::Malformed(BodyProblem::NotUtf8 {
            part: BodyPart::TensorNames,
        })
    })?;
    Ok(ParsedBody {
        rc,
        epoch: 0,
        reply_to: header.reply_to,
        prefix_len: data_offset as usize,
        data_kind,
        strings,
        task_id,
        task_name,
        meta,
        opaque,
        tensors,
    })
}

/// The indices `(first, second)` of the first name that occurs twice among `items`, if any.
/// Small tables are compared pairwise (no allocation, no hashing: this is on the hot path of
/// every message); large ones through a hash map, whose size the tensor-count limit bounds.
pub(super) fn first_duplicate<'b, T>(
    items: &[T],
    name: impl Fn(&T) -> &'b [u8],
) -> Option<(usize, usize)> {
    const PAIRWISE_MAX: usize = 32;
    if items.len() <= PAIRWISE_MAX {
        return items.iter().enumerate().find_map(|(i, a)| {
            let a = name(a);
            items[..i].iter().position(|b| name(b) == a).map(|j| (j, i))
        });
    }
    let mut seen = HashMap::with_capacity(items.len());
    items
        .iter()
        .enumerate()
        .find_map(|(i, item)| seen.insert(name(item), i).map(|j| (j, i)))
}
