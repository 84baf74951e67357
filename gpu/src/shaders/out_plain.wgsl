// matmul epilogue: nothing beyond storing out.
fn epilogue(lid: u32, t: u32, r: u32) {}
