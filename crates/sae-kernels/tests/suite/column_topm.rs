//! Column top-m (Feature Choice) against `sae_alloc::column_topm`, uniform and Zipf.

use crate::common;

use cubecl::prelude::*;
use sae_alloc::{Capacities, ScoreMatrix, column_topm as host_column_topm, usage_order};
use sae_kernels::{
    ColumnKernel, DeviceScores, column_topm, column_topm_on_device, column_topm_with, upload_scores,
};

fn suite<R: Runtime>(client: &ComputeClient<R>) {
    let mut shapes = common::SHAPES.to_vec();
    // Columns of five 256-row chunks (eight held), of the most rows a strip holds, and one
    // row longer (streamed); strips of 8 columns with a ragged last one.
    shapes.extend([(1100, 13), (4096, 3), (4097, 2)]);
    for (i, &(rows, cols)) in shapes.iter().enumerate() {
        for levels in [0, 3] {
            let data = common::matrix(i as u64 * 7 + u64::from(levels), rows, cols, levels);
            let handle = upload_scores(client, &data);
            let scores = DeviceScores::new(client, &handle, rows, cols).unwrap();
            let host = ScoreMatrix::new(&data, rows, cols).unwrap();
            let density: Vec<f32> = common::matrix(i as u64, 1, cols, 0);
            let order = usage_order(&density);
            let max = rows as u32;
            // Capacities from 0 to the whole column (300 > one cube for the 300 x 9 shape).
            let all = [
                Capacities::uniform(0, cols, max).unwrap(),
                Capacities::uniform(rows * cols / 4, cols, max).unwrap(),
                Capacities::uniform(rows * cols, cols, max).unwrap(),
                Capacities::zipf(rows * cols / 3, max, 1.0, &order).unwrap(),
            ];
            for (which, caps) in all.iter().enumerate() {
                let expected = host_column_topm(&host, caps).unwrap();
                let got = column_topm(&scores, caps).unwrap();
                if levels == 0 && which == 3 {
                    // Capacities already on the device give the same selection.
                    let on_device = client.create_from_slice(u32::as_bytes(caps.as_slice()));
                    let same = column_topm_on_device(&scores, &on_device, caps.budget());
                    assert_eq!(same.unwrap().to_selection().unwrap(), expected);
                }
                let what = format!("{rows}x{cols} budget={} l={levels}", caps.budget());
                common::assert_same(&got, &expected, &what);
                for kernel in [ColumnKernel::Resident, ColumnKernel::Streaming] {
                    for planes in [false, true] {
                        let scores = scores.with_plane_ops(planes);
                        let got = column_topm_with(&scores, caps, kernel).unwrap();
                        let what = format!("{what} {kernel:?} planes={planes}");
                        common::assert_same(&got, &expected, &what);
                    }
                }
            }
        }
    }
}

on_every_runtime!(suite);
