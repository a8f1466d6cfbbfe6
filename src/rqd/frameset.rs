//! Cuebot's frame-range arithmetic and command-token substitution, for launching one frame.
//!
//! Before a frame goes to RQD its command has its tokens replaced (`rqd-protocol.md` §5). That
//! needs the layer's frame range parsed exactly as Cuebot's `FrameSet` parses it, the frame's
//! chunk rendered exactly as `FrameSet.getChunk` renders it, and the chunk's last frame (§6.4).
//! RQD substitutes nothing itself, so a difference here changes what the frame renders.
//!
//! Faithful to Cuebot, including its quirks: no whitespace trimming, trailing commas ignored
//! (Java's `String.split`), numbers limited to Java `int`, `10-1x1` yielding no frames, and a
//! step of 0 inside a chunk meaning "unset". Unlike Cuebot, the expanded frame list is bounded
//! by [`FRAME_SET_FRAMES_MAX`], and `#FRAME_END#` is taken from the chunk itself rather than
//! from re-parsing its rendering (both give the same frame).

use std::fmt;

/// Error preparing a frame's command; Display gives a clear one-line message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameSetError {
    /// A comma-separated section matches no frame-range form (the offending section).
    Syntax(String),
    /// `x`, `y` or `:` with a step of 0.
    ZeroStep,
    /// A step above 1 with an end frame below the start frame.
    PositiveStepDescending,
    /// A negative step with an end frame at or above the start frame.
    NegativeStepAscending,
    /// A chunk was asked for at an index outside the frame list.
    IndexOutOfRange { index: usize, len: usize },
    /// The frame's number does not occur in the layer's frame range.
    FrameNotInRange(i64),
    /// The frame name does not start with a frame number and a `-` (the frame name).
    NoFrameNumber(String),
    /// The range expands to more than [`FRAME_SET_FRAMES_MAX`] frames (at least this many).
    TooManyFrames(usize),
}

impl fmt::Display for FrameSetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(section) => write!(f, "unrecognized frame range syntax {section:?}"),
            Self::ZeroStep => f.write_str("step cannot be zero"),
            Self::PositiveStepDescending => {
                f.write_str("end frame may not be less than start frame when using a positive step")
            }
            Self::NegativeStepAscending => f.write_str(
                "end frame may not be greater than start frame when using a negative step",
            ),
            Self::IndexOutOfRange { index, len } => {
                // Cuebot prints `len - 1`, which is -1 for an empty frame list.
                let last = i128::try_from(*len).unwrap_or(i128::MAX) - 1;
                write!(f, "startFrameIndex {index} is not in range 0-{last}")
            }
            Self::FrameNotInRange(frame) => {
                write!(f, "frame {frame} is not in the layer's frame range")
            }
            Self::NoFrameNumber(name) => write!(
                f,
                "frame name {name:?} does not start with a frame number followed by '-'"
            ),
            Self::TooManyFrames(count) => write!(
                f,
                "frame range expands to {count} frames, more than the limit of \
                 {FRAME_SET_FRAMES_MAX}"
            ),
        }
    }
}

impl std::error::Error for FrameSetError {}

/// Bound on the expanded frame list; exceeding it gives [`FrameSetError::TooManyFrames`].
pub const FRAME_SET_FRAMES_MAX: usize = 1_000_000;

/// A parsed frame range: the concatenation of its sections' frames, duplicates kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSet {
    frames: Vec<i64>,
}

impl FrameSet {
    /// Parses a spec by Cuebot's rules exactly; no whitespace trimming (`1-5, 7` fails).
    ///
    /// # Errors
    ///
    /// The first bad section's syntax or step error, or `TooManyFrames` once the list would
    /// pass [`FRAME_SET_FRAMES_MAX`] (checked before expanding the section).
    pub fn parse(spec: &str) -> Result<FrameSet, FrameSetError> {
        let mut frames = Vec::new();
        for text in sections(spec) {
            let section = Section::parse(text)?;
            let total = (frames.len() as u64).saturating_add(section.len());
            if total > FRAME_SET_FRAMES_MAX as u64 {
                let total = usize::try_from(total).unwrap_or(usize::MAX);
                return Err(FrameSetError::TooManyFrames(total));
            }
            section.extend_into(&mut frames);
        }
        Ok(FrameSet { frames })
    }

    /// The frame list, in iteration order.
    #[must_use]
    pub fn frames(&self) -> &[i64] {
        &self.frames
    }

    /// Index of the first occurrence of `frame`.
    #[must_use]
    pub fn index_of(&self, frame: i64) -> Option<usize> {
        self.frames.iter().position(|&f| f == frame)
    }

    /// Cuebot's `getChunk(index, chunk_size)`; a chunk size of 1 or less behaves as 1.
    ///
    /// # Errors
    ///
    /// `IndexOutOfRange` when `index` is not below the frame count.
    pub fn chunk_spec(&self, index: usize, chunk_size: i64) -> Result<String, FrameSetError> {
        self.chunk(index, chunk_size).map(render)
    }

    /// The last frame of that chunk, in iteration order (not its maximum).
    ///
    /// # Errors
    ///
    /// `IndexOutOfRange` when `index` is not below the frame count.
    pub fn chunk_end(&self, index: usize, chunk_size: i64) -> Result<i64, FrameSetError> {
        let chunk = self.chunk(index, chunk_size)?;
        chunk
            .last()
            .copied()
            .ok_or_else(|| self.out_of_range(index))
    }

    /// Frames `index ..= min(index + n - 1, len - 1)`, never empty.
    fn chunk(&self, index: usize, chunk_size: i64) -> Result<&[i64], FrameSetError> {
        let last = self
            .frames
            .len()
            .checked_sub(1)
            .ok_or_else(|| self.out_of_range(index))?;
        if index > last {
            return Err(self.out_of_range(index));
        }
        let extra = usize::try_from(chunk_size.max(1) - 1).unwrap_or(usize::MAX);
        let end = index.saturating_add(extra).min(last);
        self.frames
            .get(index..=end)
            .ok_or_else(|| self.out_of_range(index))
    }

    fn out_of_range(&self, index: usize) -> FrameSetError {
        FrameSetError::IndexOutOfRange {
            index,
            len: self.frames.len(),
        }
    }
}

/// Splits like Java's `spec.split(",")`: trailing empty sections are dropped, so `1-3,` is
/// `1-3` and `,` is empty, but `""`, `,1` and `1,,2` keep an empty (invalid) section.
fn sections(spec: &str) -> impl Iterator<Item = &str> {
    let body = spec.trim_end_matches(',');
    // Nothing but commas: Java's split returns no sections at all.
    let count = if body.is_empty() && !spec.is_empty() {
        0
    } else {
        usize::MAX
    };
    body.split(',').take(count)
}

/// One comma-separated section, parsed and validated. Numbers fit Java `int`, so all the
/// arithmetic below stays far inside `i64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    /// `N` (as `N-N`) or `A-B`: by 1 towards B.
    Range { start: i64, end: i64 },
    /// `A-BxS`.
    Step { start: i64, end: i64, step: i64 },
    /// `A-ByS`: `A-B` (step ±1 following S) minus `A-BxS`.
    Inverse { start: i64, end: i64, step: i64 },
    /// `A-B:S`: `A-BxS`, then S/2, S/4, … down to ±1, each frame once.
    Interleave { start: i64, end: i64, step: i64 },
}

impl Section {
    /// Grammar: `-?\d+` alone, or `-?\d+ '-' -?\d+` optionally followed by `[xy:] -?\d+`.
    fn parse(text: &str) -> Result<Section, FrameSetError> {
        let syntax = || FrameSetError::Syntax(text.to_string());
        let (start, rest) = take_number(text).ok_or_else(syntax)?;
        if rest.is_empty() {
            return Ok(Section::Range { start, end: start });
        }
        let rest = rest.strip_prefix('-').ok_or_else(syntax)?;
        let (end, rest) = take_number(rest).ok_or_else(syntax)?;
        let mut chars = rest.chars();
        let separator = match chars.next() {
            None => return Ok(Section::Range { start, end }),
            Some(c @ ('x' | 'y' | ':')) => c,
            Some(_) => return Err(syntax()),
        };
        let (step, tail) = take_number(chars.as_str()).ok_or_else(syntax)?;
        if !tail.is_empty() {
            return Err(syntax());
        }
        validate_step(start, end, step)?;
        Ok(match separator {
            'x' => Section::Step { start, end, step },
            'y' => Section::Inverse { start, end, step },
            _ => Section::Interleave { start, end, step },
        })
    }

    /// Number of frames this section expands to, computed without expanding it.
    fn len(self) -> u64 {
        match self {
            Section::Range { start, end } => progression_len(start, end, direction(start, end)),
            Section::Step { start, end, step } => progression_len(start, end, step),
            Section::Inverse { start, end, step } => progression_len(start, end, step.signum())
                .saturating_sub(progression_len(start, end, step)),
            // The last pass (step ±1) covers the whole range.
            Section::Interleave { start, end, step } => progression_len(start, end, step.signum()),
        }
    }

    fn extend_into(self, out: &mut Vec<i64>) {
        match self {
            Section::Range { start, end } => {
                out.extend(progression(start, end, direction(start, end)));
            }
            Section::Step { start, end, step } => out.extend(progression(start, end, step)),
            Section::Inverse { start, end, step } => out.extend(
                progression(start, end, step.signum())
                    .filter(|n| (n - start).checked_rem(step) != Some(0)),
            ),
            Section::Interleave { start, end, step } => interleave(start, end, step, out),
        }
    }
}

/// Splits a leading `-?\d+` (ASCII digits) that fits Java `int` off `text`.
fn take_number(text: &str) -> Option<(i64, &str)> {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let digits = unsigned.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let split = text.len() - unsigned.len() + digits;
    let value: i32 = text.get(..split)?.parse().ok()?;
    Some((i64::from(value), text.get(split..)?))
}

/// Cuebot's `validateStepSign`; note a step of exactly 1 with B < A is accepted.
fn validate_step(start: i64, end: i64, step: i64) -> Result<(), FrameSetError> {
    if step == 0 {
        Err(FrameSetError::ZeroStep)
    } else if step > 1 && end < start {
        Err(FrameSetError::PositiveStepDescending)
    } else if step < 0 && end >= start {
        Err(FrameSetError::NegativeStepAscending)
    } else {
        Ok(())
    }
}

fn direction(start: i64, end: i64) -> i64 {
    if end >= start {
        1
    } else {
        -1
    }
}

/// Frames `start, start + step, …` not passing `end`; none if `step` points away from `end`.
fn progression_len(start: i64, end: i64, step: i64) -> u64 {
    if step == 0 || (step > 0 && end < start) || (step < 0 && end > start) {
        return 0;
    }
    end.abs_diff(start) / step.unsigned_abs() + 1
}

fn progression(start: i64, end: i64, step: i64) -> impl Iterator<Item = i64> {
    // k * |step| <= |end - start| < 2^33, so neither the cast nor the product can overflow.
    (0..progression_len(start, end, step)).map(move |k| start + k as i64 * step)
}

/// `A-B:S`: passes with S, S/2, … (integer halving towards 0), keeping first occurrences.
fn interleave(start: i64, end: i64, step: i64, out: &mut Vec<i64>) {
    let span = progression_len(start, end, step.signum());
    let mut seen = vec![false; usize::try_from(span).unwrap_or(0)];
    let mut pass = step;
    while pass != 0 {
        for frame in progression(start, end, pass) {
            let offset = usize::try_from(frame.abs_diff(start)).unwrap_or(usize::MAX);
            if let Some(flag) = seen.get_mut(offset).filter(|flag| !**flag) {
                *flag = true;
                out.push(frame);
            }
        }
        pass /= 2;
    }
}

/// Cuebot's `framesToFrameRanges`: a left-to-right run tracker over the chunk.
fn render(frames: &[i64]) -> String {
    let Some((&first, rest)) = frames.split_first() else {
        return String::new();
    };
    let mut parts = Vec::new();
    let mut run = Run::new(first);
    for &frame in rest {
        run.feed(frame, &mut parts);
    }
    run.finish(&mut parts);
    parts.join(",")
}

/// The current run. As in Cuebot, a step of 0 means "unset" and is recomputed from the next
/// frame, even when it was set to 0 by a repeated frame.
struct Run {
    start: i64,
    last: i64,
    step: i64,
    count: usize,
}

impl Run {
    fn new(frame: i64) -> Run {
        Run {
            start: frame,
            last: frame,
            step: 0,
            count: 1,
        }
    }

    fn feed(&mut self, frame: i64, parts: &mut Vec<String>) {
        if self.step == 0 {
            self.step = frame - self.start;
        }
        if frame - self.last == self.step {
            self.last = frame;
            self.count += 1;
        } else if self.count == 2 && self.step != 1 {
            // Two frames are not worth a run: emit the first alone, keep the second as start.
            parts.push(self.start.to_string());
            self.start = self.last;
            self.last = frame;
            self.step = 0;
        } else {
            parts.push(self.render());
            *self = Run::new(frame);
        }
    }

    fn finish(self, parts: &mut Vec<String>) {
        if self.count == 2 && self.step != 1 {
            parts.push(self.start.to_string());
            parts.push(self.last.to_string());
        } else {
            parts.push(self.render());
        }
    }

    fn render(&self) -> String {
        let (a, b, step) = (self.start, self.last, self.step);
        if a == b {
            a.to_string()
        } else if step == 1 {
            format!("{a}-{b}")
        } else {
            format!("{a}-{b}x{step}")
        }
    }
}

/// Frame number = decimal integer before the FIRST '-' of the frame name ("0009-comp" -> 9).
/// Parsed like Java's `Integer.valueOf` (ASCII digits, optional `+`, must fit `int`).
///
/// # Errors
///
/// `NoFrameNumber` when there is no `-` or no such integer before it, as for `-005-x`.
pub fn frame_number(frame_name: &str) -> Result<i64, FrameSetError> {
    frame_name
        .split_once('-')
        .and_then(|(prefix, _)| prefix.parse::<i32>().ok())
        .map(i64::from)
        .ok_or_else(|| FrameSetError::NoFrameNumber(frame_name.to_string()))
}

/// Everything needed to substitute tokens for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenInput<'a> {
    pub command: &'a str,
    pub range: &'a str,
    pub chunk_size: i64,
    pub frame_name: &'a str,
    pub layer_name: &'a str,
    pub job_name: &'a str,
}

/// The substituted command and the values that went into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedCommand {
    pub command: String,
    pub frame_number: i64,
    pub frame_spec: String,
    pub frame_end: i64,
}

/// Replace tokens literally in the spec's order: `#ZFRAME#` (`%04d`, so -5 -> "-005"),
/// `#IFRAME#`, `#FRAME_START#`, `#FRAME_END#`, `#FRAME_CHUNK#`, `#LAYER#`, `#JOB#`,
/// `#FRAMESPEC#`, `#FRAME#`. Each replacement applies to the output of the previous ones, as
/// Cuebot's chained `replaceAll` does. `#FRAME_CHUNK#` is the chunk size as given.
///
/// # Errors
///
/// `NoFrameNumber`, any range error, or `FrameNotInRange` when the frame's number is not in
/// the range: the frame cannot be launched (§8 launch-preparation failure).
pub fn prepare_command(input: &TokenInput) -> Result<PreparedCommand, FrameSetError> {
    let number = frame_number(input.frame_name)?;
    let frames = FrameSet::parse(input.range)?;
    let index = frames
        .index_of(number)
        .ok_or(FrameSetError::FrameNotInRange(number))?;
    let frame_spec = frames.chunk_spec(index, input.chunk_size)?;
    let frame_end = frames.chunk_end(index, input.chunk_size)?;
    let tokens = [
        ("#ZFRAME#", zero_padded(number)),
        ("#IFRAME#", number.to_string()),
        ("#FRAME_START#", number.to_string()),
        ("#FRAME_END#", frame_end.to_string()),
        ("#FRAME_CHUNK#", input.chunk_size.to_string()),
        ("#LAYER#", input.layer_name.to_string()),
        ("#JOB#", input.job_name.to_string()),
        ("#FRAMESPEC#", frame_spec.clone()),
        ("#FRAME#", input.frame_name.to_string()),
    ];
    let command = tokens
        .iter()
        .fold(input.command.to_string(), |command, (token, value)| {
            command.replace(token, value)
        });
    Ok(PreparedCommand {
        command,
        frame_number: number,
        frame_spec,
        frame_end,
    })
}

/// `%04d`: the sign counts towards the width (-5 -> "-005").
fn zero_padded(number: i64) -> String {
    format!("{number:04}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use FrameSetError::*;

    /// What parsing a spec should give.
    enum Parsed {
        Frames(&'static [i64]),
        Len(usize),
        Fails(FrameSetError),
    }
    use Parsed::{Fails, Frames, Len};

    fn syntax(section: &str) -> Parsed {
        Fails(Syntax(section.to_string()))
    }

    fn check_parse(spec: &str, expected: &Parsed) {
        let got = FrameSet::parse(spec);
        match expected {
            Frames(frames) => {
                assert_eq!(got.as_ref().map(FrameSet::frames), Ok(*frames), "{spec:?}");
            }
            Len(len) => assert_eq!(got.map(|set| set.frames().len()), Ok(*len), "{spec:?}"),
            Fails(error) => assert_eq!(got.as_ref().err(), Some(error), "{spec:?}"),
        }
    }

    #[test]
    fn section_forms() {
        let cases: &[(&str, Parsed)] = &[
            ("1", Frames(&[1])),
            ("-3", Frames(&[-3])),
            ("007", Frames(&[7])),
            ("-0", Frames(&[0])),
            ("1-10", Frames(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10])),
            ("10-1", Frames(&[10, 9, 8, 7, 6, 5, 4, 3, 2, 1])),
            ("-5--1", Frames(&[-5, -4, -3, -2, -1])),
            ("-1--5", Frames(&[-1, -2, -3, -4, -5])),
            ("-2-2", Frames(&[-2, -1, 0, 1, 2])),
            ("5-5", Frames(&[5])),
            ("1-10x3", Frames(&[1, 4, 7, 10])),
            ("1-11x3", Frames(&[1, 4, 7, 10])),
            ("10-1x-3", Frames(&[10, 7, 4, 1])),
            ("10-1x-1", Frames(&[10, 9, 8, 7, 6, 5, 4, 3, 2, 1])),
            ("-1--10x-4", Frames(&[-1, -5, -9])),
            ("5-5x2", Frames(&[5])),
            ("10-1x1", Frames(&[])),
            ("1-10y3", Frames(&[2, 3, 5, 6, 8, 9])),
            ("10-1y-3", Frames(&[9, 8, 6, 5, 3, 2])),
            ("1-10y1", Frames(&[])),
            ("10-1y1", Frames(&[])),
            ("1-10:5", Frames(&[1, 6, 3, 5, 7, 9, 2, 4, 8, 10])),
            ("1-10:3", Frames(&[1, 4, 7, 10, 2, 3, 5, 6, 8, 9])),
            ("10-1:-4", Frames(&[10, 6, 2, 8, 4, 9, 7, 5, 3, 1])),
            ("1-3:1", Frames(&[1, 2, 3])),
            ("10-1:1", Frames(&[])),
            ("-2147483648", Frames(&[-2_147_483_648])),
            ("1-5,10,20-30x5", Frames(&[1, 2, 3, 4, 5, 10, 20, 25, 30])),
            // The spec of Cuebot's FrameSetTests.testMultipleSegments. Its expected tail
            // `1,6,2,4,3,5,7` shifts the start each pass, which contradicts §6.4's `1-10:5`.
            (
                "57,1-3,4-2,12-15x2,76-70x-3,5-12y3,1-7:5",
                Frames(&[
                    57, 1, 2, 3, 4, 3, 2, 12, 14, 76, 73, 70, 6, 7, 9, 10, 12, 1, 6, 3, 5, 7, 2, 4,
                ]),
            ),
            ("1,1,2", Frames(&[1, 1, 2])),
            // Java's split(",") drops trailing empty sections.
            ("1-3,", Frames(&[1, 2, 3])),
            ("1,,", Frames(&[1])),
            (",", Frames(&[])),
            (",,,", Frames(&[])),
        ];
        for (spec, expected) in cases {
            check_parse(spec, expected);
        }
    }

    #[test]
    fn parse_errors() {
        let cases: &[(&str, Parsed)] = &[
            ("1-5, 7", syntax(" 7")),
            (" 1", syntax(" 1")),
            ("1 ", syntax("1 ")),
            ("1 -5", syntax("1 -5")),
            ("", syntax("")),
            (",1", syntax("")),
            ("1,,2", syntax("")),
            ("-", syntax("-")),
            ("1-", syntax("1-")),
            ("1--", syntax("1--")),
            ("1-5x", syntax("1-5x")),
            ("1-5z2", syntax("1-5z2")),
            ("1-5X2", syntax("1-5X2")),
            ("1-5x+2", syntax("1-5x+2")),
            ("+1", syntax("+1")),
            ("1-5x2x3", syntax("1-5x2x3")),
            ("1-5:2:1", syntax("1-5:2:1")),
            ("1-5-7", syntax("1-5-7")),
            ("1x2", syntax("1x2")),
            ("a", syntax("a")),
            ("1.5", syntax("1.5")),
            ("\u{ff11}", syntax("\u{ff11}")),
            ("2147483648", syntax("2147483648")),
            ("1-99999999999", syntax("1-99999999999")),
            ("1-10x0", Fails(ZeroStep)),
            ("1-10y0", Fails(ZeroStep)),
            ("1-10:0", Fails(ZeroStep)),
            ("10-1x2", Fails(PositiveStepDescending)),
            ("10-1y3", Fails(PositiveStepDescending)),
            ("10-1:3", Fails(PositiveStepDescending)),
            ("1-10x-1", Fails(NegativeStepAscending)),
            ("5-5x-1", Fails(NegativeStepAscending)),
            ("1-10y-2", Fails(NegativeStepAscending)),
            ("1-10:-2", Fails(NegativeStepAscending)),
            // The first bad section wins, in order.
            ("1-10x0,a", Fails(ZeroStep)),
            ("a,1-10x0", syntax("a")),
        ];
        for (spec, expected) in cases {
            check_parse(spec, expected);
        }
    }

    #[test]
    fn frame_list_bound() {
        let max = FRAME_SET_FRAMES_MAX;
        let cases: &[(&str, Parsed)] = &[
            ("1-100000000", Fails(TooManyFrames(100_000_000))),
            ("1-1000000", Len(max)),
            ("1-1000000,1", Fails(TooManyFrames(max + 1))),
            ("1-100000000x100", Len(max)),
            ("1-100000000x99", Fails(TooManyFrames(1_010_102))),
            ("1-100000000y2", Fails(TooManyFrames(50_000_000))),
            ("1-100000000:7", Fails(TooManyFrames(100_000_000))),
            (
                "-2147483648-2147483647",
                Fails(TooManyFrames(4_294_967_296)),
            ),
            (
                "2147483647--2147483648x-1",
                Fails(TooManyFrames(4_294_967_296)),
            ),
            (
                "-2147483648-2147483647x2147483647",
                Frames(&[-2_147_483_648, -1, 2_147_483_646]),
            ),
            (
                "-2147483648-2147483647:1073741824",
                Fails(TooManyFrames(4_294_967_296)),
            ),
            ("1-1000:1000000", Len(1000)),
        ];
        for (spec, expected) in cases {
            check_parse(spec, expected);
        }
    }

    /// The frames Cuebot creates rows for: indices 0, n, 2n, … of the de-duplicated list.
    fn frame_rows(set: &FrameSet, chunk: usize) -> Vec<i64> {
        let mut unique: Vec<i64> = Vec::new();
        for &frame in set.frames() {
            if !unique.contains(&frame) {
                unique.push(frame);
            }
        }
        unique.into_iter().step_by(chunk).collect()
    }

    fn check_chunk(range: &str, chunk: i64, frame: i64, spec: &str, end: i64) {
        let set = FrameSet::parse(range).expect(range);
        let index = set.index_of(frame).expect("frame in range");
        let context = format!("{range} chunk {chunk} frame {frame}");
        assert_eq!(
            set.chunk_spec(index, chunk).as_deref(),
            Ok(spec),
            "{context}"
        );
        assert_eq!(set.chunk_end(index, chunk), Ok(end), "{context}");
    }

    /// The §6.4 table: (range, chunk, frame rows, [(frame, `#FRAMESPEC#`, `#FRAME_END#`)]).
    #[test]
    fn spec_examples_table() {
        type Row = (
            &'static str,
            i64,
            &'static [i64],
            &'static [(i64, &'static str, i64)],
        );
        let rows: &[Row] = &[
            ("1-10", 1, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], &[(4, "4", 4)]),
            ("1-10", 3, &[1, 4, 7, 10], &[(4, "4-6", 6), (10, "10", 10)]),
            (
                "1-100",
                10,
                &[1, 11, 21, 31, 41, 51, 61, 71, 81, 91],
                &[(91, "91-100", 100)],
            ),
            ("1-7", 5, &[1, 6], &[(1, "1-5", 5), (6, "6-7", 7)]),
            (
                "1-20x2",
                4,
                &[1, 9, 17],
                &[(1, "1-7x2", 7), (9, "9-15x2", 15), (17, "17,19", 19)],
            ),
            ("1-10y3", 4, &[2, 8], &[(2, "2-3,5-6", 6), (8, "8-9", 9)]),
            (
                "1-10:5",
                3,
                &[1, 5, 2, 10],
                &[(1, "1,6,3", 3), (5, "5-9x2", 9), (2, "2,4,8", 8)],
            ),
            (
                "10-1",
                3,
                &[10, 7, 4, 1],
                &[(10, "10-8x-1", 8), (1, "1", 1)],
            ),
            (
                "1-5,10,20-30x5",
                3,
                &[1, 4, 20],
                &[(4, "4-5,10", 10), (20, "20-30x5", 30)],
            ),
            ("-5--1", 2, &[-5, -3, -1], &[(-3, "-3--2", -2)]),
        ];
        for (range, chunk, frames, chunks) in rows {
            let set = FrameSet::parse(range).expect(range);
            let rows = frame_rows(&set, usize::try_from(*chunk).expect("positive"));
            assert_eq!(rows, *frames, "frame rows of {range} chunk {chunk}");
            for (frame, spec, end) in *chunks {
                check_chunk(range, *chunk, *frame, spec, *end);
            }
        }
    }

    #[test]
    fn chunk_rendering_edges() {
        let cases: &[(&str, i64, i64, &str, i64)] = &[
            // count = 2 with step != 1 emits singles.
            ("1,6,3", 3, 1, "1,6,3", 3),
            ("1,6", 2, 1, "1,6", 6),
            ("1,6,3,5", 4, 1, "1,6,3,5", 5),
            ("1-10:5", 4, 1, "1,6,3,5", 5),
            ("10-8", 3, 10, "10-8x-1", 8),
            ("10-1x-2", 3, 10, "10-6x-2", 6),
            ("1-5,10", 3, 4, "4-5,10", 10),
            ("2-3,5-6", 4, 2, "2-3,5-6", 6),
            ("1-3,7-9", 6, 1, "1-3,7-9", 9),
            ("1,2,4,8", 4, 1, "1-2,4,8", 8),
            ("1-3,5,7,9", 6, 1, "1-3,5-9x2", 9),
            ("5,5", 2, 5, "5,5", 5),
            ("5,5,5", 3, 5, "5", 5),
            // Cuebot treats a step of 0 as unset: the repeat is absorbed into the next run.
            ("1,1,2", 3, 1, "1-2", 2),
            ("3,3,3,9", 4, 3, "3-9x6", 9),
            // Cuebot's tracker after a two-frame split, reproduced as specified.
            ("1,6,3,7", 4, 1, "1,6-3,7", 7),
            // Chunk sizes of 1 or less behave as 1; big ones stop at the end of the list.
            ("1-10", 0, 4, "4", 4),
            ("1-10", -3, 4, "4", 4),
            ("1-10", i64::MIN, 4, "4", 4),
            ("1-3", 100, 1, "1-3", 3),
            ("1-3", i64::MAX, 2, "2-3", 3),
            // First occurrence of a repeated frame.
            ("1-3,1-3", 2, 3, "3,1", 1),
        ];
        for (range, chunk, frame, spec, end) in cases {
            check_chunk(range, *chunk, *frame, spec, *end);
        }
    }

    #[test]
    fn chunk_index_out_of_range() {
        let cases: &[(&str, usize, i64, usize)] = &[
            ("1-3", 3, 2, 3),
            ("1-3", usize::MAX, 1, 3),
            ("10-1x1", 0, 1, 0),
            (",", 0, 5, 0),
        ];
        for (range, index, chunk, len) in cases {
            let set = FrameSet::parse(range).expect(range);
            let error = IndexOutOfRange {
                index: *index,
                len: *len,
            };
            assert_eq!(
                set.chunk_spec(*index, *chunk),
                Err(error.clone()),
                "{range}"
            );
            assert_eq!(set.chunk_end(*index, *chunk), Err(error), "{range}");
        }
    }

    #[test]
    fn error_messages() {
        let cases: &[(FrameSetError, &str)] = &[
            (
                Syntax(" 7".into()),
                "unrecognized frame range syntax \" 7\"",
            ),
            (
                Syntax("a\nb".into()),
                "unrecognized frame range syntax \"a\\nb\"",
            ),
            (ZeroStep, "step cannot be zero"),
            (
                PositiveStepDescending,
                "end frame may not be less than start frame when using a positive step",
            ),
            (
                NegativeStepAscending,
                "end frame may not be greater than start frame when using a negative step",
            ),
            (
                IndexOutOfRange { index: 3, len: 3 },
                "startFrameIndex 3 is not in range 0-2",
            ),
            (
                IndexOutOfRange { index: 0, len: 0 },
                "startFrameIndex 0 is not in range 0--1",
            ),
            (
                FrameNotInRange(11),
                "frame 11 is not in the layer's frame range",
            ),
            (
                NoFrameNumber("-005-x".into()),
                "frame name \"-005-x\" does not start with a frame number followed by '-'",
            ),
            (
                TooManyFrames(100_000_000),
                "frame range expands to 100000000 frames, more than the limit of 1000000",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), *message);
            assert!(!error.to_string().contains('\n'));
        }
    }

    #[test]
    fn frame_numbers() {
        let none = |name: &str| Err(NoFrameNumber(name.to_string()));
        let cases: &[(&str, Result<i64, FrameSetError>)] = &[
            ("0009-comp", Ok(9)),
            ("0000-a", Ok(0)),
            ("12-a-b", Ok(12)),
            ("1234567-x", Ok(1_234_567)),
            ("+7-x", Ok(7)),
            ("-005-x", none("-005-x")),
            ("render", none("render")),
            ("", none("")),
            ("-x", none("-x")),
            ("x-1", none("x-1")),
            (" 9-x", none(" 9-x")),
            ("9 -x", none("9 -x")),
            ("2147483648-x", none("2147483648-x")),
        ];
        for (name, expected) in cases {
            assert_eq!(frame_number(name), *expected, "{name:?}");
        }
    }

    const ALL_TOKENS: &str =
        "#ZFRAME# #IFRAME# #FRAME_START# #FRAME_END# #FRAME_CHUNK# #LAYER# #JOB# #FRAMESPEC# #FRAME#";

    fn input<'a>(command: &'a str, range: &'a str, chunk: i64, frame: &'a str) -> TokenInput<'a> {
        TokenInput {
            command,
            range,
            chunk_size: chunk,
            frame_name: frame,
            layer_name: "comp",
            job_name: "sh-x-bob_v1",
        }
    }

    #[test]
    fn prepared_commands() {
        let cases: &[(TokenInput, &str, i64, &str, i64)] = &[
            (
                input(ALL_TOKENS, "1-20x2", 4, "0009-comp"),
                "0009 9 9 15 4 comp sh-x-bob_v1 9-15x2 0009-comp",
                9,
                "9-15x2",
                15,
            ),
            (
                input(
                    "r -s #FRAME_START# -e #FRAME_END#",
                    "1-10:5",
                    3,
                    "0001-comp",
                ),
                "r -s 1 -e 3",
                1,
                "1,6,3",
                3,
            ),
            (
                input("#ZFRAME##ZFRAME#", "12345", 1, "12345-comp"),
                "1234512345",
                12345,
                "12345",
                12345,
            ),
            (
                input("no tokens", "1-10", 0, "0004-comp"),
                "no tokens",
                4,
                "4",
                4,
            ),
            (
                input("#FRAME_CHUNK#", "1-10", -2, "0004-comp"),
                "-2",
                4,
                "4",
                4,
            ),
            (
                input("#FRAME# #IFRAME", "1-10", 1, "0004-#JOB#"),
                "0004-#JOB# #IFRAME",
                4,
                "4",
                4,
            ),
            (
                input("#frame# # FRAME#", "1-10", 1, "0004-comp"),
                "#frame# # FRAME#",
                4,
                "4",
                4,
            ),
        ];
        for (token_input, command, number, spec, end) in cases {
            let expected = PreparedCommand {
                command: command.to_string(),
                frame_number: *number,
                frame_spec: spec.to_string(),
                frame_end: *end,
            };
            assert_eq!(
                prepare_command(token_input),
                Ok(expected),
                "{token_input:?}"
            );
        }
    }

    #[test]
    fn replacement_is_literal_and_ordered() {
        let token_input = TokenInput {
            command: "#LAYER# #JOB#",
            range: "1",
            chunk_size: 1,
            frame_name: "1-x",
            layer_name: "#JOB#$1",
            job_name: r"a\0$0",
        };
        let prepared = prepare_command(&token_input).map(|p| p.command);
        assert_eq!(prepared.as_deref(), Ok(r"a\0$0$1 a\0$0"));
    }

    #[test]
    fn prepare_errors() {
        let cases: &[(TokenInput, FrameSetError)] = &[
            (
                input(ALL_TOKENS, "1-10", 1, "0011-comp"),
                FrameNotInRange(11),
            ),
            (
                input(ALL_TOKENS, "1-20x2", 4, "0002-comp"),
                FrameNotInRange(2),
            ),
            (
                input(ALL_TOKENS, "1-10", 1, "-005-x"),
                NoFrameNumber("-005-x".into()),
            ),
            (
                input(ALL_TOKENS, "1-10", 1, "render"),
                NoFrameNumber("render".into()),
            ),
            (
                input(ALL_TOKENS, "1-5, 7", 1, "0001-comp"),
                Syntax(" 7".into()),
            ),
            (
                input(ALL_TOKENS, "10-1x2", 1, "0001-comp"),
                PositiveStepDescending,
            ),
            (
                input(ALL_TOKENS, "1-100000000", 1, "0001-comp"),
                TooManyFrames(100_000_000),
            ),
            (
                input(ALL_TOKENS, "10-1x1", 1, "0001-comp"),
                FrameNotInRange(1),
            ),
        ];
        for (token_input, error) in cases {
            assert_eq!(
                prepare_command(token_input),
                Err(error.clone()),
                "{token_input:?}"
            );
        }
    }

    #[test]
    fn zero_padding_like_printf() {
        let cases: &[(i64, &str)] = &[
            (9, "0009"),
            (0, "0000"),
            (-5, "-005"),
            (-1234, "-1234"),
            (12345, "12345"),
        ];
        for (number, padded) in cases {
            assert_eq!(zero_padded(*number), *padded);
        }
    }

    /// Deterministic garbage through every entry point: no panics, and the chunk end is the
    /// last frame of the rendered chunk spec whenever that re-parses.
    #[test]
    fn arbitrary_inputs_do_not_panic() {
        const ALPHABET: &[u8] = b"0123456789--xy:, 9";
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = usize::try_from(next() % 12).unwrap_or(0);
            let spec: String = (0..len)
                .map(|_| {
                    char::from(ALPHABET[usize::try_from(next()).unwrap_or(0) % ALPHABET.len()])
                })
                .collect();
            let Ok(set) = FrameSet::parse(&spec) else {
                continue;
            };
            for index in 0..=set.frames().len().min(4) {
                for chunk in [-1, 0, 1, 2, 3, 7] {
                    check_consistent(&set, index, chunk);
                }
            }
            let name = format!("{spec}-x");
            let _ = prepare_command(&input(ALL_TOKENS, &spec, 3, &name));
        }
    }

    fn check_consistent(set: &FrameSet, index: usize, chunk: i64) {
        let (spec, end) = (set.chunk_spec(index, chunk), set.chunk_end(index, chunk));
        assert_eq!(spec.is_ok(), end.is_ok());
        if let (Ok(spec), Ok(end)) = (spec, end) {
            if let Ok(reparsed) = FrameSet::parse(&spec) {
                assert_eq!(
                    reparsed.frames().last(),
                    Some(&end),
                    "{:?} {spec}",
                    set.frames()
                );
            }
        }
    }
}
