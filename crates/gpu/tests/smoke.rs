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
