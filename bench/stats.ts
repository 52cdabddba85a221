// Order statistics for benchmark samples. Percentiles interpolate linearly between closest ranks,
// so small sample counts (20-ish) still give a stable p90.

export interface Summary {
  n: number;
  min: number;
  median: number;
  p90: number;
  max: number;
  mean: number;
}

export function percentile(samples: readonly number[], p: number): number {
  if (!samples.length) return NaN;
  const s = [...samples].sort((a, b) => a - b);
  const rank = (p / 100) * (s.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return s[lo]! + (s[hi]! - s[lo]!) * (rank - lo);
}

export function summarize(samples: readonly number[]): Summary {
  const n = samples.length;
  return {
    n,
    min: n ? Math.min(...samples) : NaN,
    median: percentile(samples, 50),
    p90: percentile(samples, 90),
    max: n ? Math.max(...samples) : NaN,
    mean: n ? samples.reduce((a, b) => a + b, 0) / n : NaN,
  };
}

/** Rounds for JSON and tables: samples are ms or KiB, where a tenth is plenty. */
export const round1 = (x: number): number => Math.round(x * 10) / 10;
