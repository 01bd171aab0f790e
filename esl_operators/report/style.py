"""The report's stylesheet: inline in the page, readable from 1280 px screens down to A4 paper."""

CSS = """
:root { --ink: #1f2933; --muted: #5f6b76; --line: #d9dee3; --red: #c0392b; --amber: #b9770e;
  --green: #1e8449; --bg: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Noto Sans CJK SC",
  "PingFang SC", "Microsoft YaHei", sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 20px 48px; }
header h1 { margin: 0 0 4px; font-size: 28px; }
header p { margin: 0; color: var(--muted); }
.kicker { text-transform: uppercase; letter-spacing: .08em; font-size: 12px; font-weight: 600; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px;
  margin-top: 20px; }
h2 { margin: 0 0 8px; font-size: 20px; }
h3 { margin: 18px 0 6px; font-size: 15px; }
.intro { margin: 0 0 12px; color: var(--muted); max-width: 80ch; }
.note { color: var(--muted); font-size: 13px; }
.ok { margin: 20px 0 0; padding: 10px 16px; border-radius: 8px; background: #e9f7ef;
  color: var(--green); font-weight: 600; border: 1px solid #b7e1c6; }
.alert { border: 2px solid var(--red); background: #fdf2f1; }
.alert h2 { color: var(--red); }
.info { background: #fafafa; }
.kpis { display: grid; grid-template-columns: repeat(auto-fit, minmax(140px, 1fr)); gap: 12px; }
.kpi { border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.kpi-value { font-size: 26px; font-weight: 700; font-variant-numeric: tabular-nums; }
.kpi-label { font-weight: 600; }
.kpi-note { color: var(--muted); font-size: 12px; min-height: 1em; }
.kpi.warn { border-color: var(--amber); } .kpi.warn .kpi-value { color: var(--amber); }
.kpi.bad { border-color: var(--red); } .kpi.bad .kpi-value { color: var(--red); }
.kpi.good .kpi-value { color: var(--green); }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; align-items: start; }
.side { overflow-x: auto; }
figure { margin: 0; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
svg.chart { display: block; width: 100%; height: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; overflow-wrap: anywhere; }
th { background: #f0f2f4; font-weight: 600; }
table.compact { width: auto; min-width: 40%; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
@media (max-width: 900px) { .grid { grid-template-columns: 1fr; } }
@media print {
  @page { size: A4; margin: 12mm; }
  body { background: #fff; font-size: 10pt; }
  main { max-width: none; padding: 0; }
  section { border: none; padding: 0; margin-top: 14pt; break-inside: auto; }
  .alert { border: 2px solid var(--red); padding: 8pt; }
  .grid { grid-template-columns: 1fr 1fr; gap: 8pt; }
  figure, tr, .kpi { break-inside: avoid; }
  h2, h3 { break-after: avoid; }
  table { font-size: 8pt; }
  * { print-color-adjust: exact; -webkit-print-color-adjust: exact; }
}
"""
