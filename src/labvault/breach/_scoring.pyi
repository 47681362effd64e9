from typing_extensions import Buffer

def score_pairs(rf: Buffer, rsw: Buffer, rc: Buffer, rc_sw: Buffer, cw: Buffer, cc: Buffer,
                lo: Buffer, hi: Buffer, w2: Buffer, w: Buffer, min_weight: float,
                pr: Buffer, pp: Buffer, out: Buffer, /) -> None: ...
def best_pairs(rf: Buffer, rsw: Buffer, rc: Buffer, rc_sw: Buffer, cw: Buffer, cc: Buffer,
               lo: Buffer, hi: Buffer, w2: Buffer, w: Buffer, min_weight: float,
               e_row: Buffer, e_lo: Buffer, e_cnt: Buffer, block_patient: Buffer,
               floor: float, top: Buffer, win: Buffer, /) -> None: ...
def or_groups(x: Buffer, toks: Buffer, ptr: Buffer, out: Buffer, /) -> None: ...
