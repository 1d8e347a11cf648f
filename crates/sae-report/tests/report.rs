//! A fixture run directory through `write_report`, and malformed metrics files.

use std::path::{Path, PathBuf};

use sae_report::{PLOT_HEIGHT, PLOT_WIDTH, ReportError, read_metrics, write_report};

fn fixture_run() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/run")
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn png_size(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    (info.width, info.height)
}

#[test]
fn report_writes_decodable_pngs_of_the_expected_size() {
    let out = scratch("report_pngs");
    let report = write_report(&fixture_run(), &out).unwrap();
    let names: Vec<_> = report
        .plots
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "loss.png",
            "fvu.png",
            "l0.png",
            "dead.png",
            "density.png",
            "l0_histogram.png"
        ]
    );
    for plot in &report.plots {
        assert!(plot.starts_with(&out));
        assert_eq!(
            png_size(plot),
            (PLOT_WIDTH, PLOT_HEIGHT),
            "{}",
            plot.display()
        );
    }
    assert_eq!(report.train_records, 10);
    assert_eq!(report.tokens_per_second, Some(123456.0));
    assert_eq!(report.eval_records, 2);
}

#[test]
fn markdown_shows_the_final_numbers_and_links_the_plots() {
    let out = scratch("report_markdown");
    let report = write_report(&fixture_run(), &out).unwrap();
    let md = std::fs::read_to_string(&report.markdown).unwrap();
    // Last eval: step 100, fvu 0.9 / 10 + 0.06 = 0.15.
    for needle in [
        "step 100",
        "0.1500",
        "32.10 ± 4.25",
        "1.2%",
        "23.4%",
        "0.877",
        "55.0%",
        "](fvu.png)",
        "](density.png)",
        "](l0_histogram.png)",
    ] {
        assert!(md.contains(needle), "{needle:?} missing from\n{md}");
    }
    let e = report.final_eval.unwrap();
    assert_eq!(e.step, 100);
    assert_eq!(e.recovered, Some(0.55));
}

#[test]
fn malformed_line_is_reported_with_its_number() {
    let dir = scratch("report_malformed");
    let path = dir.join("metrics.jsonl");
    std::fs::write(
        &path,
        "{\"kind\":\"train\",\"step\":1,\"tokens\":10,\"loss\":1.0}\n\n{\"kind\":\"train\",\"step\":\n",
    )
    .unwrap();
    let err = read_metrics(&path).unwrap_err();
    assert!(matches!(err, ReportError::Parse { line: 3, .. }), "{err:?}");
    assert!(err.to_string().contains("metrics.jsonl:3:"), "{err}");

    std::fs::write(&path, "{\"kind\":\"bogus\",\"step\":1,\"tokens\":1}\n").unwrap();
    assert!(matches!(
        read_metrics(&path),
        Err(ReportError::Parse { line: 1, .. })
    ));
}

#[test]
fn null_values_and_missing_evals_still_report() {
    let dir = scratch("report_nulls");
    std::fs::write(
        dir.join("metrics.jsonl"),
        "{\"kind\":\"train\",\"step\":1,\"tokens\":10,\"loss\":null,\"fvu\":0.5}\n\
         {\"kind\":\"train\",\"step\":2,\"tokens\":20,\"loss\":null,\"fvu\":0.4}\n",
    )
    .unwrap();
    let report = write_report(&dir, &dir.join("report")).unwrap();
    assert!(report.final_eval.is_none());
    let md = std::fs::read_to_string(&report.markdown).unwrap();
    assert!(md.contains("No eval record"));
    assert!(report.plots.iter().any(|p| p.ends_with("fvu.png")));
    assert!(!report.plots.iter().any(|p| p.ends_with("loss.png")));
    assert!(matches!(
        sae_report::final_eval(&dir),
        Err(ReportError::NoEval { .. })
    ));
}

#[test]
fn missing_metrics_file_names_the_path() {
    let err = read_metrics("/nonexistent/metrics.jsonl").unwrap_err();
    assert!(
        err.to_string().starts_with("/nonexistent/metrics.jsonl"),
        "{err}"
    );
}

#[test]
fn eval_lines_carry_training_and_held_out_tokens() {
    let dir = scratch("report_eval_tokens");
    let path = dir.join("metrics.jsonl");
    // As the trainer writes it: the header's `tokens`, then the flattened report.
    std::fs::write(
        &path,
        "{\"kind\":\"eval\",\"step\":5,\"tokens\":640,\"eval_tokens\":512,\
         \"batch\":{\"fvu\":0.5,\"mse\":0.1,\"l0_mean\":4.0,\"l0_std\":1.0,\"l0_histogram\":[0,1]},\
         \"inference\":null,\"dead_fraction\":0.0,\"underused_fraction\":0.1,\
         \"density_histogram\":[0,1],\"mmcs\":null,\"recovered\":null}\n",
    )
    .unwrap();
    let records = read_metrics(&path).unwrap();
    let sae_report::Record::Eval(e) = &records[0] else {
        panic!("{records:?}")
    };
    assert_eq!((e.tokens, e.report.eval_tokens), (640, 512));
    // Written before the split of dead features: the old name reads, the new field is unknown.
    assert_eq!(e.report.dead_in_training_fraction, 0.0);
    assert!(e.report.dead_on_eval_fraction.is_nan());
}

#[test]
fn non_finite_values_written_as_null_read_as_missing() {
    let dir = scratch("report_null_values");
    // A diverged run: JSON has no NaN, so the writer stores null.
    std::fs::write(
        dir.join("metrics.jsonl"),
        "{\"kind\":\"train\",\"step\":1,\"tokens\":128,\"loss\":null,\"fvu\":null}\n\
         {\"kind\":\"eval\",\"step\":1,\"tokens\":128,\"eval_tokens\":64,\
         \"batch\":{\"fvu\":null,\"mse\":null,\"l0_mean\":4.0,\"l0_std\":1.0},\
         \"dead_in_training_fraction\":0.0,\"underused_fraction\":null}\n",
    )
    .unwrap();
    let report = write_report(&dir, &dir.join("report")).unwrap();
    let e = report.final_eval.unwrap();
    assert_eq!(
        (e.fvu, e.l0_mean, e.underused_fraction),
        (None, Some(4.0), None)
    );
}

#[test]
fn recovery_by_frequency_is_plotted_when_the_eval_has_it() {
    let dir = scratch("report_recovery_bands");
    let band = |p: f64, recovered: f64| {
        format!(
            "{{\"max_probability\":{p},\"min_probability\":{p},\"features\":4,\"recovered\":{recovered},\"mmcs\":0.9}}"
        )
    };
    let line = format!(
        "{{\"kind\":\"eval\",\"step\":5,\"tokens\":640,\"eval_tokens\":512,\
         \"batch\":{{\"fvu\":0.5,\"mse\":0.1,\"l0_mean\":4.0,\"l0_std\":1.0,\"l0_histogram\":[0,1]}},\
         \"inference\":null,\"dead_in_training_fraction\":0.0,\"underused_fraction\":0.1,\
         \"density_histogram\":[0,1],\"mmcs\":0.9,\"recovered\":0.75,\
         \"recovery_by_frequency\":[{},{}]}}\n",
        band(0.5, 1.0),
        band(0.01, 0.5)
    );
    std::fs::write(dir.join("metrics.jsonl"), line).unwrap();
    let records = read_metrics(dir.join("metrics.jsonl")).unwrap();
    let sae_report::Record::Eval(e) = &records[0] else {
        panic!("{records:?}")
    };
    let bands = e.report.recovery_by_frequency.as_ref().unwrap();
    assert_eq!(bands.len(), 2);
    assert_eq!(bands[1].recovered, 0.5);
    let report = write_report(&dir, &dir.join("report")).unwrap();
    let plot = dir.join("report/recovery_by_frequency.png");
    assert!(report.plots.contains(&plot), "{:?}", report.plots);
    assert_eq!(png_size(&plot), (PLOT_WIDTH, PLOT_HEIGHT));
}
