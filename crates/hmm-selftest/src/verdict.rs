//! How a test ends: passed, failed at a line with a message, or skipped
//! with a reason; and the assertion macros the tests use.

/// Why a test did not pass.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Fail {
    /// An expectation did not hold.
    Failed {
        /// What was expected and what was found.
        message: String,
        /// `file:line` of the expectation.
        at: String,
    },
    /// The test does not apply here (as Linux's `SKIP`).
    Skip(String),
}

/// A test's result.
pub type Verdict = Result<(), Fail>;

impl Fail {
    /// A failed expectation.
    pub fn failed(message: impl Into<String>, file: &str, line: u32) -> Self {
        Self::Failed { message: message.into(), at: format!("{file}:{line}") }
    }
}

impl core::fmt::Display for Fail {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Failed { message, at } => write!(f, "{at}: {message}"),
            Self::Skip(reason) => write!(f, "skipped: {reason}"),
        }
    }
}

/// Fails the test unless the condition holds.
#[macro_export]
macro_rules! check {
    ($cond:expr) => {
        if !$cond {
            return Err($crate::Fail::failed(concat!("expected ", stringify!($cond)), file!(), line!()));
        }
    };
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::Fail::failed(format!($($msg)+), file!(), line!()));
        }
    };
}

/// Fails the test unless both sides are equal.
#[macro_export]
macro_rules! check_eq {
    ($left:expr, $right:expr $(,)?) => {{
        let (left, right) = (&$left, &$right);
        if left != right {
            return Err($crate::Fail::failed(
                format!("{} == {}: {:?} != {:?}", stringify!($left), stringify!($right), left, right),
                file!(),
                line!(),
            ));
        }
    }};
    ($left:expr, $right:expr, $($msg:tt)+) => {{
        let (left, right) = (&$left, &$right);
        if left != right {
            return Err($crate::Fail::failed(
                format!("{:?} != {:?}: {}", left, right, format!($($msg)+)),
                file!(),
                line!(),
            ));
        }
    }};
}

/// Ends the test as skipped.
#[macro_export]
macro_rules! skip {
    ($($msg:tt)+) => {
        return Err($crate::Fail::Skip(format!($($msg)+)))
    };
}

/// Unwraps a `Result`, failing the test with the error otherwise.
#[macro_export]
macro_rules! ok {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(error) => {
                return Err($crate::Fail::failed(format!("{}: {}", stringify!($result), error), file!(), line!()))
            }
        }
    };
}
