//! Property tests of the config loader: any text, and the shipped configs damaged in generated
//! ways, are parsed or refused with located problems, never a panic; hostile YAML (alias
//! bombs, deep nesting) is refused without unbounded work. Failures proptest finds are kept
//! under `proptest-regressions/` and replayed first on every later run.

use proptest::prelude::*;

use super::{ConfigError, Experiment};

const SHIPPED: [&str; 3] = [
    include_str!("../../configs/local.yaml"),
    include_str!("../../configs/multitenant.yaml"),
    include_str!("../../configs/skypilot-h100.yaml"),
];

/// Values a hostile or careless user might put anywhere.
const HOSTILE: [&str; 24] = [
    "-1",
    "0",
    "1e9",
    "1e400",
    ".nan",
    "-.inf",
    "~",
    "[]",
    "{}",
    "\"\"",
    "'..'",
    "\"../../etc/passwd\"",
    "99999999999999999999999999",
    "0x10",
    "true",
    "*nowhere",
    "&anchor x",
    "!!binary aGVsbG8=",
    "\"\\u0000\"",
    "{kind: nonsense}",
    "[1, [2, [3]]]",
    "\"a/b\"",
    "3m",
    "-5s",
];

/// One change to a config's lines.
#[derive(Debug, Clone)]
enum Damage {
    DeleteLine(usize),
    DuplicateLine(usize),
    /// The value after a line's first `: ` replaced.
    ReplaceValue(usize, String),
    /// Text inserted at a byte offset (moved to the nearest character boundary).
    Insert(usize, String),
    /// The text cut at a byte offset.
    Truncate(usize),
    SwapLines(usize, usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    let hostile = prop::sample::select(HOSTILE.to_vec()).prop_map(str::to_owned);
    let value = prop_oneof![3 => hostile, 1 => any::<String>()];
    prop_oneof![
        any::<usize>().prop_map(Damage::DeleteLine),
        any::<usize>().prop_map(Damage::DuplicateLine),
        (any::<usize>(), value).prop_map(|(i, v)| Damage::ReplaceValue(i, v)),
        (any::<usize>(), "[ :\\-\\[\\]{}\n\t#&*a-z0-9]{1,8}")
            .prop_map(|(i, t)| Damage::Insert(i, t)),
        any::<usize>().prop_map(Damage::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Damage::SwapLines(a, b)),
    ]
}

fn apply(text: &str, damage: &Damage) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let n = lines.len().max(1);
    let boundary = |at: usize| {
        let mut at = at % (text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    };
    match damage {
        Damage::DeleteLine(i) if !lines.is_empty() => {
            lines.remove(i % n);
        }
        Damage::DuplicateLine(i) if !lines.is_empty() => {
            let line = lines[i % n].clone();
            lines.insert(i % n, line);
        }
        Damage::ReplaceValue(i, value) if !lines.is_empty() => {
            let line = &mut lines[i % n];
            if let Some(at) = line.find(": ") {
                line.truncate(at + 2);
                line.push_str(value);
            }
        }
        Damage::SwapLines(a, b) if !lines.is_empty() => lines.swap(a % n, b % n),
        Damage::Insert(at, inserted) => {
            let at = boundary(*at);
            return format!("{}{inserted}{}", &text[..at], &text[at..]);
        }
        Damage::Truncate(at) => return text[..boundary(*at)].to_owned(),
        _ => {}
    }
    lines.join("\n")
}

/// What every refusal must hold: the file named, each problem said.
fn check_refusal(error: &ConfigError, origin: &str) -> Result<(), TestCaseError> {
    prop_assert!(error.to_string().contains(origin), "{error}");
    match error {
        ConfigError::Invalid { problems, .. } => {
            prop_assert!(!problems.is_empty(), "a refusal without a problem");
            for problem in problems {
                prop_assert!(!problem.message.trim().is_empty(), "{error}");
            }
        }
        ConfigError::Read { message, .. } => prop_assert!(!message.is_empty()),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_text_is_parsed_or_refused_with_located_problems(
        text in prop_oneof![any::<String>(), "[a-z_:{}\\[\\],.\"'&*!|>#0-9 \n-]{0,400}"],
    ) {
        if let Err(error) = Experiment::from_yaml(&text, "generated.yaml") {
            check_refusal(&error, "generated.yaml")?;
        }
    }

    #[test]
    fn a_damaged_shipped_config_is_parsed_or_refused_with_located_problems(
        which in 0..SHIPPED.len(),
        damages in prop::collection::vec(damage(), 1..4),
    ) {
        let text = damages.iter().fold(SHIPPED[which].to_owned(), |t, d| apply(&t, d));
        match Experiment::from_yaml(&text, "damaged.yaml") {
            Err(error) => check_refusal(&error, "damaged.yaml")?,
            // A damage that leaves a valid config (a comment line removed, a duplicate of an
            // identical list item): it must validate again, as `run` validates what `validate`
            // accepted.
            Ok(_) => prop_assert!(Experiment::from_yaml(&text, "again.yaml").is_ok()),
        }
    }
}

#[test]
fn an_alias_bomb_is_refused_without_expanding_it() {
    // Nine levels of nine references: 9^9 (387 million) strings once expanded.
    let mut text = String::from("a0: &a0 [\"lol\"]\n");
    for level in 1..10 {
        let refs = vec![format!("*a{}", level - 1); 9].join(", ");
        text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
    }
    text.push_str("name: bomb\nnodes: []\nworkloads: {}\n");
    let began = std::time::Instant::now();
    let error = Experiment::from_yaml(&text, "bomb.yaml").expect_err("refused");
    assert!(error.to_string().contains("bomb.yaml"), "{error}");
    assert!(
        began.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}: the aliases were expanded",
        began.elapsed()
    );
}

#[test]
fn nesting_deeper_than_any_config_is_refused_not_a_stack_overflow() {
    let depth = 100_000;
    let text = format!(
        "name: deep\nworkloads:\n  w:\n    request_fields: {{x: {}{}}}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let error = Experiment::from_yaml(&text, "deep.yaml").expect_err("refused");
    assert!(error.to_string().contains("deep.yaml"), "{error}");
}
