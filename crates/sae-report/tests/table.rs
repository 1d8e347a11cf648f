//! The comparison table used by `xtask repro`.

use sae_report::{FinalEval, comparison_table};

#[test]
fn comparison_table_has_one_well_formed_row_per_run() {
    let runs = vec![
        (
            "topk".to_string(),
            FinalEval {
                fvu: Some(0.1234),
                l0_mean: Some(32.0),
                l0_std: Some(0.0),
                dead_in_training_fraction: Some(0.05),
                underused_fraction: Some(0.3),
                ..FinalEval::default()
            },
        ),
        ("fc|zipf".to_string(), FinalEval::default()),
    ];
    let table = comparison_table(&runs);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4);
    let columns = lines[0].matches(" | ").count();
    for line in &lines {
        assert!(line.starts_with('|') && line.ends_with('|'), "{line}");
    }
    assert_eq!(lines[2].matches(" | ").count(), columns);
    assert!(lines[2].contains("0.1234") && lines[2].contains("32.00 ± 0.00"));
    assert!(lines[2].contains("5.0%") && lines[2].contains("30.0%"));
    assert!(lines[3].starts_with("| fc\\|zipf |"));
    assert!(lines[3].contains('—'));
}
