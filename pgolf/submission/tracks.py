"""The challenge's tracks: what each one is called and which limits it holds a record to.

    10min_16mb            the record track: 16,000,000 bytes, 600 s of training, 600 s of evaluation
    non_record_16mb       16,000,000 bytes; no wallclock budget (any hardware, step-based stopping)
    non_record_unlimited  unlimited compute: no wallclock budget; still 16,000,000 bytes, as the
                          upstream label ("non-record-unlimited-compute-16mb") says

A record's track is explicit (`pgolf pack --track`, submission.json "track"); when it is
not given, it is guessed from the config (a 16 MB cap and a 600 s clock mean the record
track) or, for a folder, from the `track_*` directory it sits in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pgolf.errors import ConfigError

CAP_BYTES = 16_000_000
BUDGET_S = 600.0


@dataclass(frozen=True)
class Track:
    name: str
    """The name `--track` takes."""
    label: str
    """What submission.json's "track" says."""
    folder: str
    """Where upstream keeps such records (records/<folder>/YYYY-MM-DD_Name)."""
    size_cap_bytes: int | None
    train_budget_s: float | None
    eval_budget_s: float | None

    def suggested_folder(self, date: str, name: str) -> str:
        return f"records/{self.folder}/{date}_{name}"


TRACKS: dict[str, Track] = {
    "10min_16mb": Track("10min_16mb", "10min_16mb", "track_10min_16mb", CAP_BYTES, BUDGET_S, BUDGET_S),
    "non_record_16mb": Track("non_record_16mb", "non_record_16mb", "track_non_record_16mb", CAP_BYTES, None, None),
    "non_record_unlimited": Track("non_record_unlimited", "non-record-unlimited-compute-16mb",
                                  "track_non_record_16mb", CAP_BYTES, None, None),
}

# Spellings found in submission.json files and folder names, normalised (lower case, '-' -> '_').
_ALIASES = {
    "10min_16mb": "10min_16mb", "track_10min_16mb": "10min_16mb", "record": "10min_16mb",
    "non_record_16mb": "non_record_16mb", "track_non_record_16mb": "non_record_16mb", "non_record": "non_record_16mb",
    "non_record_unlimited": "non_record_unlimited", "non_record_unlimited_compute_16mb": "non_record_unlimited",
    "unlimited": "non_record_unlimited", "track_non_record_unlimited": "non_record_unlimited",
}


def track_named(name: str) -> Track:
    """A track by its name or any spelling upstream used; ConfigError naming the known ones otherwise."""
    key = _ALIASES.get(str(name).strip().lower().replace("-", "_"))
    if key is None:
        raise ConfigError(f"unknown track {name!r}; known: {', '.join(TRACKS)}")
    return TRACKS[key]


def guess_track(size_cap_bytes: int, max_wallclock_seconds: float) -> Track:
    """The track a config looks like it aims at: the record track only with its cap and clock."""
    if size_cap_bytes == CAP_BYTES and max_wallclock_seconds == BUDGET_S:
        return TRACKS["10min_16mb"]
    if max_wallclock_seconds <= 0:
        return TRACKS["non_record_unlimited"]
    return TRACKS["non_record_16mb"]


def track_of_record(data: dict, folder: Path) -> tuple[Track, str]:
    """(track, where it came from) of a record folder: submission.json's "track", else its parent folder's
    name, else the record track (what a submission without a label was judged as)."""
    label = data.get("track")
    if isinstance(label, str) and label.strip():
        return track_named(label), f"submission.json track {label!r}"
    found = track_of_folder(folder)
    if found is not None:
        return found, f"folder {found.folder}"
    return TRACKS["10min_16mb"], "no track given: the record track"


def track_of_folder(folder: Path) -> Track | None:
    """The track a `records/track_*/...` path files a record under (None outside such a folder)."""
    for part in reversed(Path(folder).resolve().parts):
        key = _ALIASES.get(part.lower().replace("-", "_"))
        if key is not None and part.lower().startswith("track"):
            return TRACKS[key]
    return None


def choose_track(asked: str | None, out_folder: Path) -> Track | None:
    """pack's track: --track, else the `track_*` folder --out sits in, else None (the config decides).
    ConfigError when --track and the folder disagree: the record would be filed under the wrong label."""
    in_folder = track_of_folder(out_folder)
    if asked is None:
        return in_folder
    track = track_named(asked)
    if in_folder is not None and in_folder.folder != track.folder:
        raise ConfigError(f"--track {track.name} belongs in records/{track.folder}/, but --out is under "
                          f"records/{in_folder.folder}/")
    return track
