//! Stop strings over streamed text: where the completion must end, and how much of the text produced so far
//! is safe to send (the tail that could still turn into a stop string is held back until it cannot).

/// The stop strings of one request.
#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<String>,
}

/// What [`StopStrings::scan`] found in the text so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// A stop string starts at this byte offset: the completion is `text[..offset]`.
    Stop(usize),
    /// No stop string yet; `text[..offset]` can be sent, the rest may still become one.
    SafeUpTo(usize),
}

impl StopStrings {
    /// Stop strings (empty ones are ignored).
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        StopStrings {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// Looks for the earliest stop string in `text`, only where one can newly appear: at or after
    /// `searched_from` minus the longest stop's length (the caller passes how much it had already scanned).
    pub fn scan(&self, text: &str, searched_from: usize) -> Scan {
        if self.stops.is_empty() {
            return Scan::SafeUpTo(text.len());
        }
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut start = searched_from.saturating_sub(longest);
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        let first = self
            .stops
            .iter()
            .filter_map(|s| text[start..].find(s.as_str()).map(|i| start + i))
            .min();
        if let Some(at) = first {
            return Scan::Stop(at);
        }
        // Hold back the longest tail of `text` that is a proper prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (cut, _) in s.char_indices().skip(1) {
                if cut > hold && text.ends_with(&s[..cut]) {
                    hold = cut;
                }
            }
        }
        Scan::SafeUpTo(text.len() - hold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_stops_and_holds_back_prefixes() {
        let s = StopStrings::new(["###".to_string(), "User:".to_string()]);
        assert_eq!(s.scan("hello", 0), Scan::SafeUpTo(5));
        assert_eq!(s.scan("hello #", 0), Scan::SafeUpTo(6));
        assert_eq!(s.scan("hello ##", 0), Scan::SafeUpTo(6));
        assert_eq!(s.scan("hello ###", 6), Scan::Stop(6));
        assert_eq!(s.scan("a Us", 0), Scan::SafeUpTo(2));
        assert_eq!(s.scan("a User: b ###", 0), Scan::Stop(2));
        assert_eq!(StopStrings::default().scan("abc", 0), Scan::SafeUpTo(3));
    }

    #[test]
    fn multibyte_text_and_stops() {
        let s = StopStrings::new(["。\n".to_string()]);
        assert_eq!(s.scan("你好。", 0), Scan::SafeUpTo("你好".len()));
        assert_eq!(s.scan("你好。\n再见", 3), Scan::Stop("你好".len()));
    }
}
