"""A Label Studio label config, read with the standard library's XML parser, and checked against the
model: exactly one `<Choices>` whose `toName` is an `<Audio>` (or `<AudioPlus>`) or `<Image>` object,
single choice, whose choice values are exactly the model's classes (ORCA_LABELSTUDIO_CLASSES:
the class folders of its labeled sets, `calls` and `nocalls` for srkw_cnn).

A config that does not fit raises `LabelConfigError` (a 422) naming what does not fit; Label Studio
shows that message when it connects the backend or saves the config (`/labelstudio/setup`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ..errors import Unprocessable

AUDIO_TAGS = ("Audio", "AudioPlus")
IMAGE_TAGS = ("Image",)


class LabelConfigError(Unprocessable):
    """The label config cannot be answered by this model (the message says why)."""


@dataclass(frozen=True)
class LabelConfig:
    from_name: str  # the <Choices> name: a prediction's from_name
    to_name: str  # the object's name: its to_name
    kind: str  # "audio" or "image"
    data_key: str  # the task's data field holding the media URL (value="$audio" → "audio")
    choices: tuple[str, ...]  # the values a result stores, in the config's order


def classes(setting: str | None) -> tuple[str, ...]:
    """The model's classes in index order (sorted, as training numbers the class folders)."""
    names = sorted({c.strip() for c in (setting or "").split(",") if c.strip()})
    if len(names) != 2:
        raise LabelConfigError(f"ORCA_LABELSTUDIO_CLASSES must name the model's two classes, got {setting!r}")
    return tuple(names)


def _choice_value(choice: ET.Element) -> str | None:
    """What Label Studio stores for a choice: its alias when it has one, else its value."""
    return choice.get("alias") or choice.get("value")


def parse(text: str | None) -> LabelConfig:
    """The config's one Choices over one Audio or Image object; LabelConfigError naming what is missing."""
    if not text or not str(text).strip():
        raise LabelConfigError("label config: empty (Label Studio sent no label config)")
    try:
        root = ET.fromstring(str(text))
    except ET.ParseError as error:
        raise LabelConfigError(f"label config: not well-formed XML ({error})") from None
    elements = list(root.iter())
    objects = {e.get("name"): e for e in elements if e.tag in AUDIO_TAGS + IMAGE_TAGS and e.get("name")}
    choices = [e for e in elements if e.tag == "Choices"]
    if len(choices) != 1:
        raise LabelConfigError(f"label config: this model answers exactly one <Choices> (calls or not), found "
                               f"{len(choices)}" + (f" ({', '.join(c.get('name') or '?' for c in choices)})"
                                                    if choices else ""))
    tag = choices[0]
    name, to_name = tag.get("name"), tag.get("toName")
    if not name or not to_name:
        raise LabelConfigError("label config: <Choices> needs a name and a toName")
    if "," in to_name or to_name not in objects:
        known = ", ".join(f"<{e.tag} name=\"{n}\">" for n, e in objects.items()) or "none"
        others = [e.tag for e in elements if e.get("name") == to_name]
        found = f" (it names a <{others[0]}>)" if others else ""
        raise LabelConfigError(f"label config: <Choices name=\"{name}\"> has toName=\"{to_name}\"{found}; it must "
                               f"name one <Audio> or <Image> object (the config has: {known})")
    if (tag.get("choice") or "single").strip().lower() not in ("single", "single-radio"):
        raise LabelConfigError(f"label config: <Choices name=\"{name}\"> must be single choice, has "
                               f"choice=\"{tag.get('choice')}\"")
    target = objects[to_name]
    value = (target.get("value") or "").strip()
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(f"label config: <{target.tag} name=\"{to_name}\"> must take its media from the "
                               f"task's data (value=\"$field\"), has value=\"{value}\"")
    values = tuple(v for v in (_choice_value(c) for c in tag.iter("Choice")) if v is not None)
    return LabelConfig(name, to_name, "audio" if target.tag in AUDIO_TAGS else "image", value[1:], values)


def check(config: LabelConfig, model_classes: tuple[str, ...]) -> None:
    """LabelConfigError unless the choices are exactly the model's classes (names both sides' extras)."""
    given, wanted = list(config.choices), list(model_classes)
    missing = [c for c in wanted if c not in given]
    extra = [c for c in given if c not in wanted]
    duplicated = sorted({c for c in given if given.count(c) > 1})
    if missing or extra or duplicated:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"not classes of the model: {', '.join(extra)}")
        if duplicated:
            parts.append(f"given twice: {', '.join(duplicated)}")
        raise LabelConfigError(f"label config: the choices of <Choices name=\"{config.from_name}\"> are "
                               f"{', '.join(given) or 'none'}; the model's classes are {', '.join(wanted)} "
                               f"(ORCA_LABELSTUDIO_CLASSES): {'; '.join(parts)}")


def checked(text: str | None, class_setting: str | None) -> tuple[LabelConfig, tuple[str, ...]]:
    """(the parsed config, the model's classes), or LabelConfigError."""
    model_classes = classes(class_setting)
    config = parse(text)
    check(config, model_classes)
    return config, model_classes
