mod common;


#[test]
fn adapter_report_and_roundtrip() {
    let Some(ctx) = common::ctx() else { return };
    let r = ctx.report();
    assert!(!r.name.is_empty());
    let data = common::rand(100, common::seed());
    let t = ctx.upload_f32(10, 10, &data).unwrap();
    let mut step = ctx.step();
    let h = step.read_f32(&t, 5, 20).unwrap();
    let out = ctx.run(step).unwrap();
    assert_eq!(out.f32(h), data[5..25].to_vec());
}

/// CI runs the suite a second time on llvmpipe with LP_NATIVE_VECTOR_WIDTH=128 (and Mesa's shader
/// cache off, which would otherwise hand back the 256-bit builds) and sets
/// NANO_QWEN3_EXPECT_SUBGROUP=4: the kernels must then really run with that subgroup size.
#[test]
fn subgroup_size_as_expected() {
    let Some(ctx) = common::ctx() else { return };
    let seen = ctx.probe_subgroups().unwrap();
    if let Some((size, count)) = seen {
        assert_eq!(size * count, 64, "subgroups of a 64-invocation workgroup");
        assert!(size >= ctx.report().subgroup_min_size && size <= ctx.report().subgroup_max_size);
    }
    if let Ok(want) = std::env::var("NANO_QWEN3_EXPECT_SUBGROUP") {
        assert_eq!(seen.map(|s| s.0), Some(want.parse::<u32>().unwrap()), "subgroup size the kernels run with");
    }
}
