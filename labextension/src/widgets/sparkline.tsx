import * as React from 'react';

/**
 * SVG path ("M x y L x y ...") of a line chart of `values` in a `width` x
 * `height` box, with `max` at the top (default: the largest value). `null`
 * values (Slurm could not tell) break the line instead of being drawn as 0.
 * Returns '' when there is nothing to draw.
 */
export function sparklinePath(
  values: ReadonlyArray<number | null>,
  width: number,
  height: number,
  max?: number
): string {
  const present = values.filter((v): v is number => v !== null && isFinite(v));
  if (present.length === 0) {
    return '';
  }
  const top = Math.max(max ?? Math.max(...present), 1e-9);
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  const parts: string[] = [];
  let drawing = false;
  values.forEach((v, i) => {
    if (v === null || !isFinite(v)) {
      drawing = false;
      return;
    }
    const x = values.length > 1 ? i * step : width;
    const clamped = Math.min(Math.max(v, 0), top);
    const y = height - (clamped / top) * height;
    parts.push(`${drawing ? 'L' : 'M'}${x.toFixed(1)} ${y.toFixed(1)}`);
    drawing = true;
  });
  return parts.join(' ');
}

/** A small line chart with a label and the current value. */
export function Sparkline(props: {
  values: ReadonlyArray<number | null>;
  label: string;
  value: string;
  title: string;
  max?: number;
  className?: string;
  width?: number;
  height?: number;
}): JSX.Element {
  const width = props.width ?? 80;
  const height = props.height ?? 18;
  const d = sparklinePath(props.values, width, height, props.max);
  return (
    <span
      className={`jp-HPC-spark ${props.className ?? ''}`}
      title={props.title}
    >
      <span className="jp-HPC-spark-label">{props.label}</span>
      <svg
        className="jp-HPC-spark-chart"
        width={width}
        height={height}
        viewBox={`0 0 ${width} ${height}`}
        role="img"
        aria-label={props.title}
      >
        <rect
          className="jp-HPC-spark-frame"
          x={0}
          y={0}
          width={width}
          height={height}
        />
        {d ? <path className="jp-HPC-spark-line" d={d} /> : null}
      </svg>
      <span className="jp-HPC-spark-value">{props.value}</span>
    </span>
  );
}
