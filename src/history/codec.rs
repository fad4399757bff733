//! The bytes of one compact history entry, and of a `parameters` value inside it.
//!
//! An entry is `flags`, its timestamp (zigzag varint), then the strings present: the
//! event id inline, name and type by dictionary id when the dictionary has room. A string
//! reference is one varint: `id << 1 | 1`, or `len << 1` followed by the bytes.
//!
//! `parameters` is kept as tokens of its JSON: object keys and string values by
//! dictionary id (their text as it arrived, escapes included), numbers as their text, so
//! that writing the tokens back gives exactly the text that arrived. Text with
//! whitespace between tokens (or nested past `MAX_DEPTH`) is kept whole instead.

use crate::dict;

use super::json::put3;

const HAS_ID: u8 = 1;
const HAS_NAME: u8 = 2;
const HAS_TYPE: u8 = 4;
const HAS_PARAMS: u8 = 8;

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const NUM: u8 = 3;
const STR: u8 = 4;
const OBJ: u8 = 5;
const ARR: u8 = 6;
const RAW: u8 = 7;
/// Ends an array, in place of a value's tag.
const END: u8 = 8;
/// Ends an object, in place of a key (keys are written as their reference plus one).
const KEY_END: u8 = 0;

const MAX_DEPTH: usize = 32;

/// An entry's bytes that do not decode: a checkpoint written by another build, or damage
/// the part's checksum did not catch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a compact history entry does not decode (at byte {0})")]
pub struct Malformed(pub usize);

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The bytes `put_varint` writes for `v`.
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// Writes a string reference: by id when `share` and the dictionary takes it.
fn put_str(out: &mut Vec<u8>, s: &str, share: bool) {
    put_ref(out, s, share.then(|| dict::intern(s)).flatten());
}

/// Writes a string reference to `s`: by `id` if it has one, else its bytes. Inlined:
/// a call here for every string of every event's `parameters` was ~180 instructions an
/// event (callgrind).
#[inline(always)]
fn put_ref(out: &mut Vec<u8>, s: &str, id: Option<u32>) {
    match id {
        Some(id) => put_varint(out, (u64::from(id) << 1) | 1),
        None => {
            put_varint(out, (s.len() as u64) << 1);
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// Writes an optional string: 0 for none, else its reference plus one; by the id `id`
/// gives it, if any.
pub fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>, id: impl Fn(&str) -> Option<u32>) {
    match s {
        None => out.push(0),
        Some(s) => match id(s) {
            Some(id) => put_varint(out, ((u64::from(id) << 1) | 1) + 1),
            None => {
                put_varint(out, ((s.len() as u64) << 1) + 1);
                out.extend_from_slice(s.as_bytes());
            }
        },
    }
}

pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_varint(out, zigzag(v));
}

/// A string as stored: by id, or inline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrRef<'a> {
    Id(u32),
    Inline(&'a str),
}

/// Reads bytes written by this module. Past the end, or on bytes that do not decode, it
/// records the place and gives empty values, so that callers check once.
pub struct Reader<'a> {
    buf: &'a [u8],
    pub pos: usize,
    pub bad: Option<usize>,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            bad: None,
        }
    }

    fn fail(&mut self) {
        self.bad.get_or_insert(self.pos);
        self.pos = self.buf.len();
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline]
    pub fn byte(&mut self) -> u8 {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                b
            }
            None => {
                self.fail();
                0
            }
        }
    }

    #[inline]
    pub fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    #[inline]
    pub fn varint(&mut self) -> u64 {
        // Most are one byte (tags, ids under 64, short lengths), and most others two (a
        // string id under 8,192: a webhook body reads ~30 such a history entry, each a
        // call to `long_varint` of ~90 instructions).
        match self.buf.get(self.pos..) {
            Some(&[b, ..]) if b < 0x80 => {
                self.pos += 1;
                u64::from(b)
            }
            Some(&[low, high, ..]) if high < 0x80 => {
                self.pos += 2;
                u64::from(low & 0x7f) | u64::from(high) << 7
            }
            _ => self.long_varint(),
        }
    }

    #[inline(never)]
    fn long_varint(&mut self) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        while shift < 64 {
            let b = self.byte();
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
        self.fail();
        0
    }

    #[inline]
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        match self.buf.get(self.pos..self.pos.saturating_add(n)) {
            Some(b) => {
                self.pos += n;
                b
            }
            None => {
                self.fail();
                &[]
            }
        }
    }

    fn str_from(&mut self, v: u64) -> StrRef<'a> {
        if v & 1 == 1 {
            return StrRef::Id((v >> 1) as u32);
        }
        let at = self.pos;
        let bytes = self.bytes((v >> 1) as usize);
        match std::str::from_utf8(bytes) {
            Ok(s) => StrRef::Inline(s),
            Err(_) => {
                self.bad.get_or_insert(at);
                StrRef::Inline("")
            }
        }
    }

    pub fn str_ref(&mut self) -> StrRef<'a> {
        let v = self.varint();
        self.str_from(v)
    }

    /// An optional string as `put_opt_str` writes it.
    pub fn opt_str_ref(&mut self) -> Option<StrRef<'a>> {
        match self.varint() {
            0 => None,
            v => Some(self.str_from(v - 1)),
        }
    }

    pub fn i64(&mut self) -> i64 {
        unzigzag(self.varint())
    }

    /// A string reference resolved in this process's dictionary, its text as stored:
    /// as `str` reads it, but an inline string's bytes not checked for UTF-8 (for a
    /// writer that checks them on its way).
    pub fn stored(&mut self, view: &mut dict::View) -> &'a [u8] {
        let v = self.varint();
        if v & 1 == 0 {
            return self.bytes((v >> 1) as usize);
        }
        match view.get((v >> 1) as u32) {
            Some(s) => s.as_bytes(),
            None => {
                self.fail();
                b""
            }
        }
    }

    /// A string reference resolved in this process's dictionary.
    pub fn str(&mut self) -> &'a str {
        match self.str_ref() {
            StrRef::Inline(s) => s,
            StrRef::Id(id) => dict::get(id).unwrap_or_else(|| {
                self.fail();
                ""
            }),
        }
    }
}

/// The fields of one entry: `P` the parameters (their tokens, as `put_json` writes them);
/// `S` a string (`&str`, or its bytes as stored, as `read_entry_stored` gives them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fields<P, S> {
    pub event_id: Option<S>,
    pub event_name: Option<S>,
    pub event_type: Option<S>,
    pub timestamp: i64,
    pub parameters: Option<P>,
}

/// Appends the body of one entry.
pub fn put_entry(out: &mut Vec<u8>, f: &Fields<&[u8], &str>) {
    let flags = [
        (f.event_id.is_some(), HAS_ID),
        (f.event_name.is_some(), HAS_NAME),
        (f.event_type.is_some(), HAS_TYPE),
        (f.parameters.is_some(), HAS_PARAMS),
    ]
    .iter()
    .fold(0, |acc, &(set, bit)| if set { acc | bit } else { acc });
    out.push(flags);
    put_varint(out, zigzag(f.timestamp));
    if let Some(id) = f.event_id {
        put_str(out, id, false);
    }
    if let Some(name) = f.event_name {
        put_str(out, name, true);
    }
    if let Some(ty) = f.event_type {
        put_str(out, ty, true);
    }
    if let Some(tokens) = f.parameters {
        out.extend_from_slice(tokens);
    }
}

/// Reads the body of one entry.
pub fn read_entry<'a>(r: &mut Reader<'a>) -> Fields<&'a [u8], &'a str> {
    read_fields(r, Reader::str)
}

/// Reads the body of one entry as `read_entry` does, its strings' bytes as stored
/// (`Reader::stored`: inline ones not checked for UTF-8).
pub fn read_entry_stored<'a>(
    r: &mut Reader<'a>,
    view: &mut dict::View,
) -> Fields<&'a [u8], &'a [u8]> {
    read_fields(r, |r| r.stored(view))
}

fn read_fields<'a, S>(
    r: &mut Reader<'a>,
    mut string: impl FnMut(&mut Reader<'a>) -> S,
) -> Fields<&'a [u8], S> {
    let flags = r.byte();
    let timestamp = unzigzag(r.varint());
    let mut f = Fields {
        event_id: None,
        event_name: None,
        event_type: None,
        timestamp,
        parameters: None,
    };
    if flags & HAS_ID != 0 {
        f.event_id = Some(string(r));
    }
    if flags & HAS_NAME != 0 {
        f.event_name = Some(string(r));
    }
    if flags & HAS_TYPE != 0 {
        f.event_type = Some(string(r));
    }
    // The parameters are last: the rest of the body, not walked here (reading an
    // entry's other fields costs nothing for them).
    if flags & HAS_PARAMS != 0 {
        f.parameters = Some(r.buf.get(r.pos..).unwrap_or_default());
        r.pos = r.buf.len();
    }
    f
}

/// Writes `json` (one valid JSON value) as tokens, or whole when it is not compact text.
pub fn put_json(out: &mut Vec<u8>, json: &str) {
    let mark = out.len();
    let mut pos = 0;
    if tokens(&mut Tokens(out), json, &mut pos, 0).is_none() || pos != json.len() {
        out.truncate(mark);
        Tokens(out).whole(json);
    }
}

/// Appends the tokens of a JSON value, one piece at a time: for `put_json`, and for the
/// decoder's scan (`wire::fast`), which writes them as it checks the text.
pub struct Tokens<'o>(pub &'o mut Vec<u8>);

impl Tokens<'_> {
    /// Objects and arrays nested deeper are kept whole (`whole`).
    pub const MAX_DEPTH: usize = MAX_DEPTH;

    #[inline]
    pub fn object(&mut self) {
        self.0.push(OBJ);
    }

    /// A key of the object begun last, as written between its quotes: its id in the
    /// dictionary, if it has one (`key_id` writes the same again). Taken as values are
    /// (`string`): a producer may name keys by ids too.
    #[inline]
    pub fn key(&mut self, key: &str) -> Option<u32> {
        // Written as an optional string is (its reference plus one), so that `KEY_END`
        // (0) cannot be mistaken for one.
        let id = dict::intern_repeated(key);
        put_opt_str(self.0, Some(key), |_| id);
        id
    }

    /// The key with id `id` in the dictionary, as `key` writes it.
    #[inline]
    pub fn key_id(&mut self, id: u32) {
        put_varint(self.0, ((u64::from(id) << 1) | 1) + 1);
    }

    #[inline]
    pub fn object_end(&mut self) {
        self.0.push(KEY_END);
    }

    #[inline]
    pub fn array(&mut self) {
        self.0.push(ARR);
    }

    #[inline]
    pub fn array_end(&mut self) {
        self.0.push(END);
    }

    /// A string value, as written between its quotes (escapes kept): by id once this
    /// thread has met it before (`dict::intern_repeated`), else inline.
    #[inline]
    pub fn string(&mut self, s: &str) {
        self.0.push(STR);
        put_ref(self.0, s, dict::intern_repeated(s));
    }

    /// A number, as written.
    #[inline]
    pub fn number(&mut self, text: &str) {
        self.0.push(NUM);
        put_str(self.0, text, false);
    }

    /// `true`, `false` or `null`.
    #[inline]
    pub fn literal(&mut self, word: Literal) {
        self.0.push(match word {
            Literal::True => TRUE,
            Literal::False => FALSE,
            Literal::Null => NULL,
        });
    }

    /// A whole value as its text: one that is not compact, or nests too deep.
    pub fn whole(&mut self, json: &str) {
        self.0.push(RAW);
        put_varint(self.0, (json.len() as u64) << 1);
        self.0.extend_from_slice(json.as_bytes());
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Literal {
    True,
    False,
    Null,
}

/// One value of `json` at `pos` to tokens; `None` where the text is not compact JSON.
fn tokens(out: &mut Tokens<'_>, text: &str, pos: &mut usize, depth: usize) -> Option<()> {
    let json = text.as_bytes();
    match *json.get(*pos)? {
        b'{' if depth < MAX_DEPTH => {
            out.object();
            *pos += 1;
            if json.get(*pos) == Some(&b'}') {
                *pos += 1;
                out.object_end();
                return Some(());
            }
            loop {
                let key = string(text, pos)?;
                if json.get(*pos) != Some(&b':') {
                    return None;
                }
                *pos += 1;
                out.key(key);
                tokens(out, text, pos, depth + 1)?;
                match *json.get(*pos)? {
                    b',' => *pos += 1,
                    b'}' => break,
                    _ => return None,
                }
            }
            *pos += 1;
            out.object_end();
        }
        b'[' if depth < MAX_DEPTH => {
            out.array();
            *pos += 1;
            if json.get(*pos) == Some(&b']') {
                *pos += 1;
                out.array_end();
                return Some(());
            }
            loop {
                tokens(out, text, pos, depth + 1)?;
                match *json.get(*pos)? {
                    b',' => *pos += 1,
                    b']' => break,
                    _ => return None,
                }
            }
            *pos += 1;
            out.array_end();
        }
        b'"' => {
            let s = string(text, pos)?;
            out.string(s);
        }
        b't' => literal(out, json, pos, b"true", Literal::True)?,
        b'f' => literal(out, json, pos, b"false", Literal::False)?,
        b'n' => literal(out, json, pos, b"null", Literal::Null)?,
        b'-' | b'0'..=b'9' => {
            let start = *pos;
            while json
                .get(*pos)
                .is_some_and(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
            {
                *pos += 1;
            }
            out.number(text.get(start..*pos)?);
        }
        _ => return None,
    }
    Some(())
}

fn literal(
    out: &mut Tokens<'_>,
    json: &[u8],
    pos: &mut usize,
    word: &[u8],
    tag: Literal,
) -> Option<()> {
    json.get(*pos..*pos + word.len()).filter(|w| *w == word)?;
    *pos += word.len();
    out.literal(tag);
    Some(())
}

/// The text between the quotes of the string at `pos` (escapes kept), moving past it.
fn string<'j>(text: &'j str, pos: &mut usize) -> Option<&'j str> {
    let json = text.as_bytes();
    if json.get(*pos) != Some(&b'"') {
        return None;
    }
    let start = *pos + 1;
    let mut i = start;
    // Strings (URLs, titles, campaigns) are most of the text: `json_scan` finds the
    // next quote or backslash eight bytes at a time, where a byte at a time was a third
    // of the tokenizer's time.
    loop {
        i = crate::json_scan::string_stop(json, i);
        match *json.get(i)? {
            b'"' => break,
            b'\\' => i += 2,
            // A control character: not in text serde accepted; kept as any byte.
            _ => i += 1,
        }
    }
    *pos = i + 1;
    // Quotes are ASCII, so both ends are character boundaries.
    text.get(start..i)
}

/// Appends the JSON text of the value at the start of `tokens` (tokens this process
/// wrote, or read back from a checkpoint part or RocksDB: ids are its dictionary's).
pub fn write_json(out: &mut Vec<u8>, tokens: &[u8]) {
    dict::with_view(|view| write_json_in(out, tokens, view));
}

/// `write_json`, ids read through `view` (this thread's, taken once for many values).
pub fn write_json_in(out: &mut Vec<u8>, tokens: &[u8], view: &mut dict::View) {
    let mark = out.len();
    if write_plain(out, tokens, view).is_some() {
        return;
    }
    out.truncate(mark);
    let here = |id: u32| dict::get(id).map(str::as_bytes);
    // Tokens that do not decode (damage that got past a checksum: see
    // `History::from_encoded`) are written as `null`, not as part of a value.
    if write_value(out, &mut Reader::new(tokens), &here, 0).is_err() {
        out.truncate(mark);
        out.extend_from_slice(b"null");
    }
}

/// Containers nested this deep at most are `write_plain`'s; deeper ones `write_value`'s.
const PLAIN_DEPTH: u32 = 16;

/// `write_json` of the usual value, in one loop with the open containers as bits of a
/// word: `write_value`'s call, depth check and `Result` for each member, with
/// `dict::get`'s look-ups (`view` now), were a quarter of the ~250 instructions a member
/// of a webhook body's history took. `None`, having
/// written part of the value, for anything else (tokens that do not decode, a string id
/// the dictionary has not, containers nested deeper than `PLAIN_DEPTH`): `write_value`
/// then writes it, or refuses it, as it always has.
fn write_plain(out: &mut Vec<u8>, t: &[u8], view: &mut dict::View) -> Option<()> {
    let mut r = Reader::new(t);
    // Bit `d` of `objects`: the container open at depth `d` is an object (else an array).
    let (mut objects, mut depth, mut first) = (0u32, 0u32, true);
    loop {
        // A value.
        let tag = r.byte();
        match tag {
            NULL => out.extend_from_slice(b"null"),
            FALSE => out.extend_from_slice(b"false"),
            TRUE => out.extend_from_slice(b"true"),
            NUM | RAW => plain_piece(out, &mut r, view, b"", b"")?,
            STR => plain_piece(out, &mut r, view, b"\"", b"\"")?,
            OBJ | ARR if depth < PLAIN_DEPTH => {
                objects = (objects & !(1 << depth)) | (u32::from(tag == OBJ) << depth);
                depth += 1;
                first = true;
                out.push(if tag == OBJ { b'{' } else { b'[' });
            }
            _ => return None,
        }
        // Past the value: the next member or element, or the ends of containers.
        loop {
            if r.bad.is_some() {
                return None;
            }
            if depth == 0 {
                return Some(());
            }
            if objects & (1 << (depth - 1)) != 0 {
                match r.varint() {
                    0 if r.bad.is_none() => out.push(b'}'),
                    0 => return None,
                    k => {
                        // The separator apart: `put3`'s ends are constants, plain stores.
                        if !first {
                            out.push(b',');
                        }
                        plain_ref(out, &mut r, view, k - 1, b"\"", b"\":")?;
                        first = false;
                        break;
                    }
                }
            } else if r.peek() == Some(END) {
                r.pos += 1;
                out.push(b']');
            } else {
                if !first {
                    out.push(b',');
                }
                first = false;
                break;
            }
            depth -= 1;
            first = false;
        }
    }
}

/// `put_piece` of the string reference read next, ids through this process's dictionary.
#[inline(always)]
fn plain_piece(
    out: &mut Vec<u8>,
    r: &mut Reader<'_>,
    view: &mut dict::View,
    before: &[u8],
    after: &[u8],
) -> Option<()> {
    let v = r.varint();
    plain_ref(out, r, view, v, before, after)
}

#[inline(always)]
fn plain_ref(
    out: &mut Vec<u8>,
    r: &mut Reader<'_>,
    view: &mut dict::View,
    v: u64,
    before: &[u8],
    after: &[u8],
) -> Option<()> {
    put_piece(
        out,
        r,
        v,
        |id| view.get(id).map(str::as_bytes),
        before,
        after,
    )
    .ok()
}

/// Appends the JSON text of one value, the text of string ids from `text` (this
/// process's dictionary, or another's when translating a checkpoint).
fn write_value<T: AsRef<[u8]>, F: Fn(u32) -> Option<T> + ?Sized>(
    out: &mut Vec<u8>,
    r: &mut Reader<'_>,
    text: &F,
    depth: usize,
) -> Result<(), Malformed> {
    if depth > MAX_DEPTH {
        return Err(Malformed(r.pos));
    }
    let tag = r.byte();
    if !write_scalar(out, r, tag, text)? {
        write_container(out, r, tag, text, depth)?;
    }
    match r.bad {
        Some(at) => Err(Malformed(at)),
        None => Ok(()),
    }
}

/// Appends the value of `tag` if it is a scalar (true), else nothing (false). Members'
/// values are mostly scalars: written here, in the loop over the members, they cost no
/// call of `write_value` each (a webhook body writes ~20 a history entry).
#[inline(always)]
fn write_scalar<T: AsRef<[u8]>, F: Fn(u32) -> Option<T> + ?Sized>(
    out: &mut Vec<u8>,
    r: &mut Reader<'_>,
    tag: u8,
    text: &F,
) -> Result<bool, Malformed> {
    match tag {
        NULL => out.extend_from_slice(b"null"),
        FALSE => out.extend_from_slice(b"false"),
        TRUE => out.extend_from_slice(b"true"),
        NUM | RAW => {
            let v = r.varint();
            put_piece(out, r, v, text, b"", b"")?;
        }
        STR => {
            let v = r.varint();
            put_piece(out, r, v, text, b"\"", b"\"")?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// Appends the object or array of `tag`, its scalar members written in place and the
/// others by `write_value`.
fn write_container<T: AsRef<[u8]>, F: Fn(u32) -> Option<T> + ?Sized>(
    out: &mut Vec<u8>,
    r: &mut Reader<'_>,
    tag: u8,
    text: &F,
    depth: usize,
) -> Result<(), Malformed> {
    let member = |out: &mut Vec<u8>, r: &mut Reader<'_>| -> Result<(), Malformed> {
        // At the depth limit a value goes to `write_value`, which refuses it.
        let tag = r.peek().unwrap_or(END);
        if tag <= STR && depth < MAX_DEPTH {
            r.pos += 1;
            write_scalar(out, r, tag, text).map(|_| ())
        } else {
            write_value(out, r, text, depth + 1)
        }
    };
    match tag {
        OBJ => {
            let mut empty = true;
            loop {
                let k = r.varint();
                if k == 0 || r.bad.is_some() {
                    break;
                }
                let before: &[u8] = if empty { b"{\"" } else { b",\"" };
                put_piece(out, r, k - 1, text, before, b"\":")?;
                empty = false;
                member(out, r)?;
            }
            out.extend_from_slice(if empty { b"{}" } else { b"}" });
        }
        ARR => {
            out.push(b'[');
            let mut first = true;
            while r.peek() != Some(END) && r.bad.is_none() {
                if !first {
                    out.push(b',');
                }
                first = false;
                member(out, r)?;
            }
            r.byte();
            out.push(b']');
        }
        _ => return Err(Malformed(r.pos)),
    }
    Ok(())
}

/// Appends `before`, the text of the string reference `v` (a dictionary id through
/// `text`, or inline bytes read from `r`), and `after`.
#[inline(always)]
fn put_piece<T: AsRef<[u8]>>(
    out: &mut Vec<u8>,
    r: &mut Reader<'_>,
    v: u64,
    text: impl FnOnce(u32) -> Option<T>,
    before: &[u8],
    after: &[u8],
) -> Result<(), Malformed> {
    if v & 1 == 1 {
        let t = text((v >> 1) as u32).ok_or(Malformed(r.pos))?;
        put3(out, before, t.as_ref(), after);
    } else {
        put3(out, before, r.bytes((v >> 1) as usize), after);
    }
    Ok(())
}

/// Rewrites the string references of one entry body read from `r` through `lookup`
/// (ids of another process's dictionary to their text), into `out` with this process's
/// ids. Fails on bytes that do not decode.
pub fn translate_entry(
    out: &mut Vec<u8>,
    r: &mut Reader<'_>,
    lookup: &dyn Fn(u32) -> Option<String>,
) -> Result<(), Malformed> {
    let flags = r.byte();
    let timestamp = unzigzag(r.varint());
    let text = |r: &mut Reader<'_>| -> Result<String, Malformed> {
        match r.str_ref() {
            StrRef::Inline(s) => Ok(s.to_string()),
            StrRef::Id(id) => lookup(id).ok_or(Malformed(r.pos)),
        }
    };
    let id = (flags & HAS_ID != 0).then(|| text(r)).transpose()?;
    let name = (flags & HAS_NAME != 0).then(|| text(r)).transpose()?;
    let ty = (flags & HAS_TYPE != 0).then(|| text(r)).transpose()?;
    let mut json = Vec::new();
    let mut params = Vec::new();
    if flags & HAS_PARAMS != 0 {
        let start = r.pos;
        let sub = &r.buf[start..];
        let mut inner = Reader::new(sub);
        write_value(&mut json, &mut inner, lookup, 0)?;
        r.pos = start + inner.pos;
        put_json(
            &mut params,
            std::str::from_utf8(&json).map_err(|_| Malformed(r.pos))?,
        );
    }
    if let Some(at) = r.bad {
        return Err(Malformed(at));
    }
    put_entry(
        out,
        &Fields {
            event_id: id.as_deref(),
            event_name: name.as_deref(),
            event_type: ty.as_deref(),
            timestamp,
            parameters: (flags & HAS_PARAMS != 0).then_some(&params[..]),
        },
    );
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What the tokenizer writes of `json`.
    pub(crate) fn tokens_of(json: &str) -> Vec<u8> {
        let mut tokens = Vec::new();
        put_json(&mut tokens, json);
        tokens
    }

    /// What the tokenizer writes of `json` once its strings have been met before, and
    /// what any writing of the same strings writes after it: a string is written inline
    /// the first time a thread meets it, by id from the second (`dict::intern_repeated`),
    /// so two writings compare token for token once both come after a first.
    pub(crate) fn settled_tokens_of(json: &str) -> Vec<u8> {
        tokens_of(json);
        tokens_of(json)
    }

    fn round_trip(json: &str) -> (String, bool) {
        let tokens = tokens_of(json);
        let raw = tokens[0] == RAW;
        let mut out = Vec::new();
        write_json(&mut out, &tokens);
        (String::from_utf8(out).unwrap(), raw)
    }

    #[test]
    fn varint_len_is_what_put_varint_writes() {
        for v in [0, 1, 0x7f, 0x80, 0x3fff, 0x4000, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(varint_len(v), out.len(), "{v}");
        }
    }

    /// Every varint reads back as written, whatever its length and whatever follows it;
    /// one cut short is bad, and a longer form of a value (not written here) still reads
    /// as that value.
    #[test]
    fn varints_read_back_as_written_and_a_cut_one_is_bad() {
        let mut values = vec![u64::MAX, u64::from(u32::MAX)];
        for bits in 0..64 {
            let v = 1u64 << bits;
            values.extend([v - 1, v, v + 1]);
        }
        for v in values {
            let mut bytes = Vec::new();
            put_varint(&mut bytes, v);
            for tail in [&[][..], &[0x00], &[0xff, 0x01]] {
                let mut buf = bytes.clone();
                buf.extend_from_slice(tail);
                let mut r = Reader::new(&buf);
                assert_eq!((r.varint(), r.pos, r.bad), (v, bytes.len(), None), "{v}");
            }
            for cut in 0..bytes.len() {
                let mut r = Reader::new(&bytes[..cut]);
                r.varint();
                assert!(r.bad.is_some(), "{v} cut to {cut} bytes");
            }
        }
        for (bytes, v) in [(&[0x81, 0x00][..], 1), (&[0x80, 0x80, 0x01], 1 << 14)] {
            let mut r = Reader::new(bytes);
            assert_eq!((r.varint(), r.pos), (v, bytes.len()));
        }
    }

    /// `write_json` as it was before `write_plain`: `write_value`, or `null`.
    fn by_write_value(tokens: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let here = |id: u32| dict::get(id).map(str::as_bytes);
        if write_value(&mut out, &mut Reader::new(tokens), &here, 0).is_err() {
            out = b"null".to_vec();
        }
        out
    }

    /// Some compact JSON text: scalars, long strings (kept inline), and containers
    /// nested up to `deep`, past `write_plain`'s depth at times.
    fn some_json(rng: &mut crate::history::tests::Rng, depth: u32, deep: u32) -> String {
        let pick = if depth >= deep { 5 } else { 8 };
        match rng.next(pick) {
            0 => "null".into(),
            1 => ["true", "false"][rng.next(2) as usize].into(),
            2 => format!("{}", rng.next(1 << 40) as i64 - (1 << 39)),
            3 => format!("{}.{}e-{}", rng.next(1000), rng.next(100), rng.next(9)),
            4 => {
                let s = [
                    "",
                    "a",
                    "utm_source",
                    "q\\\"x",
                    "\\u00e9",
                    "https://x.example/p/1",
                ][rng.next(6) as usize];
                format!("\"{s}{}\"", "z".repeat(rng.next(2) as usize * 300))
            }
            5 if depth >= deep => "[]".into(),
            5 | 6 => {
                let items: Vec<String> = (0..rng.next(4))
                    .map(|_| some_json(rng, depth + 1, deep))
                    .collect();
                format!("[{}]", items.join(","))
            }
            _ => {
                let members: Vec<String> = (0..rng.next(5))
                    .map(|i| format!("\"k{}\":{}", i, some_json(rng, depth + 1, deep)))
                    .collect();
                format!("{{{}}}", members.join(","))
            }
        }
    }

    /// The one-loop writer writes what the recursive one writes, for any value it takes
    /// (and leaves the rest to it): values nested past its depth, long inline strings,
    /// and damaged tokens (bytes changed, cut short) come out as they did.
    #[test]
    fn the_plain_writer_writes_what_write_value_writes() {
        let mut rng = crate::history::tests::Rng::new(7);
        let mut plain = 0;
        for case in 0..4_000 {
            let deep = [2, 4, 20][case % 3];
            let json = some_json(&mut rng, 0, deep);
            let mut tokens = Vec::new();
            put_json(&mut tokens, &json);
            let mut out = Vec::new();
            if dict::with_view(|view| write_plain(&mut out, &tokens, view)).is_some() {
                plain += 1;
                assert_eq!(out, json.as_bytes(), "{json}");
            }
            let mut out = Vec::new();
            write_json(&mut out, &tokens);
            assert_eq!(out, json.as_bytes(), "{json}");
            for _ in 0..8 {
                let mut damaged = tokens.clone();
                match rng.next(3) {
                    0 => damaged.truncate(rng.next(tokens.len() as u64) as usize),
                    _ => {
                        let at = rng.next(tokens.len() as u64) as usize;
                        damaged[at] = rng.next(256) as u8;
                    }
                }
                let mut out = Vec::new();
                write_json(&mut out, &damaged);
                assert_eq!(out, by_write_value(&damaged), "{json} damaged: {damaged:?}");
            }
        }
        assert!(plain > 3_000, "only {plain} written by the plain writer");
    }

    /// A value nested up to `MAX_DEPTH` deep is written; a deeper one (never written by
    /// this module: damage) makes the whole value `null`, whether it is a scalar
    /// (written in its container's loop) or a container.
    #[test]
    fn values_past_the_depth_limit_are_refused_scalar_or_not() {
        for (inner, text) in [(NULL, "null"), (STR, "\"a\""), (OBJ, "{}")] {
            for depth in [MAX_DEPTH, MAX_DEPTH + 1] {
                let mut tokens = vec![ARR; depth];
                tokens.push(inner);
                match inner {
                    STR => tokens.extend([2, b'a']),
                    OBJ => tokens.push(KEY_END),
                    _ => {}
                }
                tokens.extend(vec![END; depth]);
                let mut out = Vec::new();
                write_json(&mut out, &tokens);
                let want = if depth <= MAX_DEPTH {
                    format!("{}{text}{}", "[".repeat(depth), "]".repeat(depth))
                } else {
                    "null".to_string()
                };
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    want,
                    "{depth} deep, {text}"
                );
            }
        }
    }

    /// A string value or key is written inline the first time this thread meets it
    /// and by id from the second on (`dict::intern_repeated`), and reads back the same
    /// either way. Strings met once never enter the dictionary.
    #[test]
    fn strings_take_an_id_when_met_again_and_read_back_the_same() {
        let (key, value) = ("codec-test-key-7", "codec-test-order-20261207-000123");
        let text = format!(r#"{{"{key}":"{value}","n":1}}"#);
        let inline = |tokens: &[u8], s: &str| tokens.windows(s.len()).any(|w| w == s.as_bytes());
        let first = tokens_of(&text);
        assert!(inline(&first, key) && inline(&first, value));
        assert_eq!((dict::id_of(key), dict::id_of(value)), (None, None));
        let second = tokens_of(&text);
        assert!(!inline(&second, key) && !inline(&second, value));
        assert!(dict::id_of(key).is_some() && dict::id_of(value).is_some());
        for tokens in [&first, &second] {
            let mut json = Vec::new();
            write_json(&mut json, tokens);
            assert_eq!(String::from_utf8(json).unwrap(), text);
        }

        let once: Vec<String> = (0..2_000).map(|i| format!("codec-test-once-{i}")).collect();
        for s in &once {
            tokens_of(&format!(r#"{{"{s}-key":"{s}"}}"#));
        }
        let has_id =
            |s: &String| dict::id_of(s).is_some() || dict::id_of(&format!("{s}-key")).is_some();
        assert!(!once.iter().any(has_id));
    }

    #[test]
    fn parameters_come_back_as_they_arrived() {
        for json in [
            r#"{"custom_params":{"page_title":"Cart","value":121.76,"n":-1e5},"utm_source":"g","utm_term":""}"#,
            r#"{}"#,
            r#"{"a":[],"b":[1,[2,{}],null,true,false],"c":{"d":{}}}"#,
            r#"{"esc":"a\"b\\c\u00e9","é":"ü","dup":1,"dup":2}"#,
            r#"{"long":"0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"}"#,
        ] {
            assert_eq!(round_trip(json), (json.to_string(), false), "{json}");
        }
    }

    #[test]
    fn text_with_whitespace_is_kept_whole() {
        for json in [r#"{ "a": 1 }"#, "{\"a\":\n1}", r#"[1, 2]"#] {
            assert_eq!(round_trip(json), (json.to_string(), true));
        }
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        assert_eq!(round_trip(&deep), (deep.clone(), true));
    }

    #[test]
    fn an_entry_reads_back_and_translates() {
        let text = r#"{"utm_source":"google","v":[1.5]}"#;
        // Met once before: "google" is written by id (see `dict::intern_repeated`), as
        // the translation, which meets it again, writes it.
        put_json(&mut Vec::new(), text);
        let mut tokens = Vec::new();
        put_json(&mut tokens, text);
        let fields = Fields {
            event_id: Some("evt_1"),
            event_name: Some("home_page"),
            event_type: None,
            timestamp: -5,
            parameters: Some(&tokens[..]),
        };
        let mut body = Vec::new();
        put_entry(&mut body, &fields);
        let mut r = Reader::new(&body);
        let back = read_entry(&mut r);
        assert!(r.at_end() && r.bad.is_none());
        let mut json = Vec::new();
        write_json(&mut json, back.parameters.unwrap());
        assert_eq!(json, text.as_bytes());
        assert_eq!(
            (back.event_id, back.event_name),
            (Some("evt_1"), Some("home_page"))
        );
        assert_eq!((back.event_type, back.timestamp), (None, -5));

        let mut again = Vec::new();
        let lookup = |id: u32| dict::get(id).map(str::to_string);
        translate_entry(&mut again, &mut Reader::new(&body), &lookup).unwrap();
        assert_eq!(again, body);
        let nothing = |_: u32| None;
        assert!(translate_entry(&mut Vec::new(), &mut Reader::new(&body), &nothing).is_err());
        assert!(translate_entry(&mut Vec::new(), &mut Reader::new(&body[..4]), &lookup).is_err());
    }
}
