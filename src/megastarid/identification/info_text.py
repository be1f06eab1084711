"""``catalogue info``'s text: a catalogue's summary (``CatalogueStore.summary``) as lines a person reads."""

from __future__ import annotations

from megastarid.identification.calibrate import describe


def info_lines(summary: dict) -> list[str]:
    """``catalogue info``'s text."""
    model = (summary.get("model") or {}).get("fingerprint") or {}
    source = (summary.get("model") or {}).get("source") or {}
    made_from = (
        source.get("checkpoint")
        or source.get("weights")
        or ("pretrained" if source.get("pretrained") else "")
    )
    lines = [
        f"catalogue    {summary['catalogue']} (schema {summary['schema_version']})",
        f"root         {summary['root']}",
        f"individuals  {summary['individuals']}",
        f"photos       {summary['photos']}"
        + (f" ({summary['undated_photos']} undated)" if summary["undated_photos"] else ""),
        f"outings      {summary['outings']} (individual x outing)",
        f"dates        {summary['first_date'] or '-'} .. {summary['last_date'] or '-'}",
        f"datasets     {', '.join(summary['datasets']) or '-'}",
    ]
    if model:
        lines.append(
            f"model        {model['kind']} {model['backbone']} ({made_from}), {model['image_size']} px, "
            f"{model['embedding_dim']}-d, TTA {model['tta']}, "
            f"sha256 {model['sha256'][:12]}"
        )
    lines.append(f"calibration  {describe(summary.get('calibration'))}")
    lines.append(f"updated      {summary.get('updated') or summary.get('created') or '-'}")
    return lines
