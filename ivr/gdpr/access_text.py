"""The words of a subject access export, per language, and its summary as HTML and plain text.

Each statement kind of :mod:`ivr.gdpr.access` has one sentence per language here, written as a
function of the statement's facts and nothing else: a sentence can only say what the facts
hold. ``tests/test_subject_export.py`` checks that every kind has a sentence in every language.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ivr.gdpr.access import AccessReport, Audio, CallEntry, RecordingEntry, Statement

__all__ = ["BASIS_WORDS", "LANGUAGES", "SENTENCES", "WORDS", "render_html", "render_text"]

LANGUAGES: tuple[str, ...] = ("en", "sv")

BASIS_WORDS: Mapping[str, Mapping[str, str]] = {
    "en": {
        "consent": "your consent",
        "contract": "a contract with you",
        "legal_obligation": "a legal obligation",
        "vital_interests": "vital interests",
        "public_task": "a task in the public interest",
        "legitimate_interests": "legitimate interests",
    },
    "sv": {
        "consent": "ditt samtycke",
        "contract": "avtal med dig",
        "legal_obligation": "rättslig förpliktelse",
        "vital_interests": "grundläggande intressen",
        "public_task": "uppgift av allmänt intresse",
        "legitimate_interests": "berättigat intresse",
    },
}

OUTCOME_WORDS: Mapping[str, Mapping[str, str]] = {
    "en": {
        "accepted": "you agreed to recording",
        "declined": "you declined recording",
        "no_response": "no answer to the question: not recorded",
        "objected": "you objected: not recorded",
        "not_objected": "no objection: recorded",
        "notified": "you were told the call is recorded",
        "not_asked": "recorded without a notice",
        "hung_up": "the call ended before a choice was made",
        "setup_failed": "the call could not be set up",
        "interrupted": "the service stopped during the call",
        "busy": "the service was at capacity: put through or turned away, not recorded",
    },
    "sv": {
        "accepted": "du godkände inspelning",
        "declined": "du avböjde inspelning",
        "no_response": "inget svar på frågan: inte inspelat",
        "objected": "du invände: inte inspelat",
        "not_objected": "ingen invändning: inspelat",
        "notified": "du fick veta att samtalet spelas in",
        "not_asked": "inspelat utan meddelande",
        "hung_up": "samtalet slutade innan ett val gjordes",
        "setup_failed": "samtalet kunde inte kopplas upp",
        "interrupted": "tjänsten stannade under samtalet",
        "busy": "tjänsten var fullbelagd: kopplades vidare eller avvisades, inte inspelat",
    },
}

WORDS: Mapping[str, Mapping[str, str]] = {
    "en": {
        "title": "Your data: calls and call recordings",
        "intro": "This is everything {controllers} holds about the telephone number {phone} "
        "in its call recording service, as of {now}: {calls} call(s) and {recordings} "
        "recording(s). The files in this export hold the same in machine-readable form "
        "(summary.json, and one JSON file per recording).",
        "sealed_intro": "{sealed} recording(s) are held sealed: they are encrypted to the "
        "controller's own key, which this export was made without, so their audio is not "
        "included; everything else about them is.",
        "calls": "Your calls",
        "no_calls": "No calls from this number are on record.",
        "recordings": "Your recordings",
        "no_recordings": "No recordings of this number are kept.",
        "controller": "Controller",
        "a": "Why, and on what lawful basis (Art. 15(1)(a))",
        "b": "Which data (Art. 15(1)(b))",
        "c": "Who receives them (Art. 15(1)(c), 15(2))",
        "d": "How long they are kept (Art. 15(1)(d))",
        "e": "Your rights (Art. 15(1)(e))",
        "f": "Complaints (Art. 15(1)(f))",
        "g": "Where the data come from (Art. 15(1)(g))",
        "h": "Automated decisions (Art. 15(1)(h))",
        "gaps": "What this export could not state",
        "requests": "Earlier requests about this number",
        "when": "When",
        "line": "Line",
        "platform": "Carried by",
        "outcome": "Outcome",
        "end_reason": "How it ended",
        "recording": "Recording",
        "number_until": "Your number removed after",
        "duration": "Length",
        "basis": "Lawful basis",
        "purpose": "Purpose",
        "choice": "Your choice",
        "kept_until": "Kept until",
        "audio": "Audio",
        "audio_sealed": "held, sealed (not in this export)",
        "audio_none": "none kept",
        "status": "Status",
        "action": "What",
        "by": "By",
        "reason": "Reason",
        "accessed": "Access log",
        "no_date": "no date yet: a recording of the call is kept without an end date",
        "legal_hold": "not while a recording of the call is under a legal hold",
        "none": "-",
    },
    "sv": {
        "title": "Dina uppgifter: samtal och samtalsinspelningar",
        "intro": "Detta är allt som {controllers} har om telefonnumret {phone} i sin tjänst för "
        "samtalsinspelning, per {now}: {calls} samtal och {recordings} inspelning(ar). Filerna i "
        "exporten innehåller samma sak i maskinläsbar form (summary.json och en JSON-fil per "
        "inspelning).",
        "sealed_intro": "{sealed} inspelning(ar) är förseglade: de är krypterade till den "
        "personuppgiftsansvariges egen nyckel, som exporten gjordes utan, så ljudet finns inte "
        "med; allt annat om dem finns med.",
        "calls": "Dina samtal",
        "no_calls": "Inga samtal från det här numret finns registrerade.",
        "recordings": "Dina inspelningar",
        "no_recordings": "Inga inspelningar av det här numret sparas.",
        "controller": "Personuppgiftsansvarig",
        "a": "Varför, och med vilken rättslig grund (art. 15.1 a)",
        "b": "Vilka uppgifter (art. 15.1 b)",
        "c": "Vem som tar emot dem (art. 15.1 c, 15.2)",
        "d": "Hur länge de sparas (art. 15.1 d)",
        "e": "Dina rättigheter (art. 15.1 e)",
        "f": "Klagomål (art. 15.1 f)",
        "g": "Varifrån uppgifterna kommer (art. 15.1 g)",
        "h": "Automatiserade beslut (art. 15.1 h)",
        "gaps": "Det här kunde exporten inte ange",
        "requests": "Tidigare begäranden om det här numret",
        "when": "När",
        "line": "Linje",
        "platform": "Förmedlat av",
        "outcome": "Utfall",
        "end_reason": "Hur det slutade",
        "recording": "Inspelning",
        "number_until": "Ditt nummer tas bort efter",
        "duration": "Längd",
        "basis": "Rättslig grund",
        "purpose": "Ändamål",
        "choice": "Ditt val",
        "kept_until": "Sparas till",
        "audio": "Ljud",
        "audio_sealed": "förseglad (finns inte i exporten)",
        "audio_none": "inget sparat",
        "status": "Status",
        "action": "Vad",
        "by": "Av",
        "reason": "Skäl",
        "accessed": "Åtkomstlogg",
        "no_date": "inget datum ännu: en inspelning av samtalet sparas utan slutdatum",
        "legal_hold": "inte så länge en inspelning av samtalet omfattas av ett bevarandebeslut",
        "none": "-",
    },
}

PLATFORM_WORDS: Mapping[str, Mapping[str, str]] = {
    "en": {"twilio": "Twilio", "asterisk": "the Asterisk exchange", "import": "imported file"},
    "sv": {"twilio": "Twilio", "asterisk": "Asterisk-växeln", "import": "importerad fil"},
}

AND = {"en": "and", "sv": "och"}


def _join(items: Sequence[Any], lang: str) -> str:
    texts = [str(i) for i in items]
    if len(texts) <= 1:
        return "".join(texts)
    return f"{', '.join(texts[:-1])} {AND[lang]} {texts[-1]}"


def _date(iso: str | None) -> str:
    return iso[:10] if iso else "-"


def _when(iso: str | None) -> str:
    return f"{iso[:10]} {iso[11:16]} UTC" if iso else "-"


def _duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    seconds = round(ms / 1000)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def _keys(entries: Sequence[Mapping[str, str]], lang: str, on: str) -> str:
    return _join([f"{e['key']} ({on} {e['line']})" for e in entries], lang)


Sentence = Callable[[Mapping[str, Any]], str]


def _en() -> dict[str, Sentence]:
    basis = BASIS_WORDS["en"]

    def platforms(f: Mapping[str, Any]) -> str:
        return _join([PLATFORM_WORDS["en"].get(p, p) for p in f["platforms"]], "en")

    def number(f: Mapping[str, Any]) -> str:
        how = {
            "public_key": "sealed to the controller's own key, which the service cannot open",
            "local": "encrypted under the controller's key",
        }.get(f["key_custody"] or "", "encrypted")
        return (
            f"Your telephone number (caller ID), with each of the {f['calls']} call(s) listed "
            f"above: stored {how}, with a keyed hash of it that is used to find your calls."
        )

    def voice(f: Mapping[str, Any]) -> str:
        agent = (
            f"; {f['with_agent']} of them also hold the voice of the person who answered"
            if f["with_agent"]
            else ""
        )
        return f"Voice recordings of your calls: {f['recordings']} recording(s){agent}."

    def retention_line(source: str) -> Sentence:
        why = {
            "line": "the period set for that line",
            "controller": "the controller's period for recordings on this lawful basis",
            "default": "the service's default period for this lawful basis",
        }[source]
        return lambda f: (
            f"Recordings of calls to {f['line']} (lawful basis: {basis[f['lawful_basis']]}) are "
            f"kept {f['days']} days from the start of the recording ({why}), then erased "
            f"automatically; the service checks for what is due every {f['sweep_minutes']} "
            "minutes."
        )

    def processor(f: Mapping[str, Any], does: str) -> str:
        name = f["name"] or "The operator of this recording service"
        contact = f" ({f['contact']})" if f.get("contact") else ""
        return f"{name}{contact}, the processor, {does}."

    def objection(f: Mapping[str, Any]) -> str:
        bases = _join([basis[b] for b in f["lawful_bases"]], "en")
        out = (
            f"Where your data are processed on the basis of {bases}, you may object at any "
            "time, on grounds relating to your particular situation (Art. 21(1)); the "
            "controller must then stop unless it shows compelling legitimate grounds that "
            "override your interests, or needs the data for legal claims."
        )
        if f["decline_keys"]:
            out += (
                " During a call you can object while the notice plays by pressing "
                f"{_keys(f['decline_keys'], 'en', 'on')}."
            )
        return out

    def withdraw(f: Mapping[str, Any]) -> str:
        out = (
            "You may withdraw your consent at any time, as easily as you gave it (Art. 7(3)); "
            "this does not make what was done before unlawful."
        )
        return out

    return {
        "purpose": lambda f: (
            f"Purpose: {_join(f['purposes'], 'en')}; lawful basis: "
            f"{basis[f['lawful_basis']]} (GDPR {f['basis_article']})."
        ),
        "purpose.call_record": lambda f: (
            "A record of each call (when, to which line, how it ended), kept with your number "
            "for a limited time so that your calls can be found again, for example to answer a "
            "request like this one."
        ),
        "category.number": number,
        "category.call_metadata": lambda f: (
            "Call details: the time, the line called, the telephony platform that carried the "
            "call and its id for the call, and how the call ended."
        ),
        "category.voice": voice,
        "category.consent_evidence": lambda f: (
            f"What you were told and what you chose, for {f['recordings']} recording(s): the "
            "notice or question played (its words and a fingerprint of its audio), the keys "
            "you pressed and when."
        ),
        "category.access_log": lambda f: (
            f"A log of who played, exported, held or erased your recordings, when and why "
            f"({f['entries']} entries)."
        ),
        "recipient.controller": lambda f: (
            f"{f['name']}, the controller, who decides why your calls are recorded; its data "
            f"protection officer: {f['dpo_contact']}."
        ),
        "recipient.processor.keys": lambda f: processor(
            f,
            "which runs the recording service for the controller, stores the recordings and "
            "holds the keys to them; every playback and export is logged with a reason",
        ),
        "recipient.processor.sealed": lambda f: processor(
            f,
            "which runs the recording service for the controller and stores the recordings "
            "and your number, but cannot decrypt them: they are sealed to the controller's own "
            "key",
        ),
        "recipient.processor": lambda f: processor(
            f, "which runs the recording service for the controller"
        ),
        "recipient.twilio": lambda f: (
            f"Twilio, the telephony carrier that connected {f['calls']} of your call(s) to the "
            "service: it receives your number and the sound of the call to carry it, and its "
            "own call log keeps your number until it is erased there."
        ),
        "transfer.twilio": lambda f: (
            "Twilio Inc. is established in the United States: ask the controller whether its "
            "carriage of your calls is a transfer to a third country and which safeguards "
            "apply (Art. 46)."
        ),
        "recipient.asterisk": lambda f: (
            "The operator of the Asterisk telephone exchange"
            + (f" at {f['host']}" if f["host"] else "")
            + f" that connected {f['calls']} of your call(s) to the service: it receives your "
            "number and the sound of the call to carry it, and its own call log keeps your "
            "number until it is erased there."
        ),
        "recipient.platform": lambda f: (
            f"The telephony platform '{f['platform']}', which carried {f['calls']} of your call(s)."
        ),
        "retention.line.line": retention_line("line"),
        "retention.line.controller": retention_line("controller"),
        "retention.line.default": retention_line("default"),
        "retention.recording": lambda f: (
            f"Recording {f['recording']}: kept until {_date(f['until'])}."
        ),
        "retention.legal_hold": lambda f: (
            f"Recording {f['recording']} is under a legal hold ({f['reason']}): it is kept past "
            "that date until the hold is released."
        ),
        "retention.call_record": lambda f: (
            "Your number and the platform's id for the call are removed from the record of a "
            "call by the same automatic check "
            f"once the call is more than {f['days']} days old and nothing recorded of it is "
            "kept any longer; the time, line and outcome of the call stay, without your "
            "number. The date for each call is in the table of calls."
        ),
        "retention.access_log": lambda f: (
            "The log of who accessed your recordings is kept as the record of accountability, "
            "without an end date; it names recordings by their id, not by your number."
        ),
        "right.contact": lambda f: (
            "To use any of these rights, contact the controller's data protection officer: "
            f"{f['dpo_contact']}."
            if f["dpo_contact"]
            else "To use any of these rights, contact the controller."
        ),
        "right.rectification": lambda f: (
            "You may ask for inaccurate data about you to be corrected, and for incomplete data "
            "to be completed, for example with a statement of your own (Art. 16)."
        ),
        "right.erasure": lambda f: (
            "You may ask for your data to be erased (Art. 17). Erasure makes a recording "
            "unreadable in the service at once (its key is destroyed and the audio deleted), "
            "and removes your number and the telephony platform's id for the call from the "
            "record of your calls."
        ),
        "right.erasure.backups.scheduled": lambda f: (
            "Copies in the service's backups become unreadable at the latest "
            f"{f['days']} days after an erasure, when the key that protected them is "
            "destroyed on the service's schedule."
        ),
        "right.erasure.backups.unscheduled": lambda f: (
            "Copies in the service's backups stay readable until the operator destroys the "
            "key that protected them: the service's configuration sets no date for that."
        ),
        "right.erasure.backups.sealed": lambda f: (
            "Copies in the service's backups stay sealed to the controller's own key; the "
            "service cannot read them, and they become unreadable when the controller "
            "destroys that key."
        ),
        "right.erasure.limited": lambda f: (
            "Where your data are processed for "
            f"{_join([basis[b] for b in f['lawful_bases']], 'en')}, the controller may keep them "
            "for as long as that requires (Art. 17(3)(b))."
        ),
        "right.erasure.legal_hold": lambda f: (
            f"Recording(s) {_join(f['recordings'], 'en')} are under a legal hold: they are "
            "kept, also on request, until the hold is released (Art. 17(3))."
        ),
        "right.restriction": lambda f: (
            "You may ask for the use of your data to be restricted, for example while you "
            "contest their accuracy or while an objection is considered (Art. 18)."
        ),
        "right.objection": objection,
        "right.withdraw_consent": withdraw,
        "right.portability": lambda f: (
            "For recordings made on the basis of "
            f"{_join([basis[b] for b in f['lawful_bases']], 'en')} "
            f"({_join(f['recordings'], 'en')}), you may receive them in a structured, commonly "
            "used, machine-readable form and have them passed to another controller (Art. 20); "
            "the WAV and JSON files of this export are such a form."
        ),
        "complaint": lambda f: (
            "You may complain to a supervisory authority, in particular in the EU member state "
            "where you live, where you work or where the alleged infringement took place "
            "(Art. 77)."
        ),
        "source.call": lambda f: (
            "Everything here was collected from you during your calls: your number as "
            f"presented to the service by {platforms(f)} (caller ID), "
            + ("what you said, " if f["recordings"] else "")
            + "and the keys you pressed."
        ),
        "source.import": lambda f: (
            f"Recording(s) {_join(f['recordings'], 'en')} were imported into the service from "
            "a file by its operator."
        ),
        "automated.none": lambda f: (
            "There is no automated decision-making about you, including profiling (Art. 22): "
            "the service's only automatic step is to start a recording, or not, by the line's "
            "rules and the keys you pressed."
        ),
        "gap.controller_not_configured": lambda f: (
            f"The configuration ({f['configuration']}) does not describe the controller "
            f"'{f['controller']}': its name, contact, retention periods and in-call keys are "
            "not stated here."
        ),
        "gap.line_not_configured": lambda f: (
            f"The line with policy '{f['line']}' is not in the configuration: its retention "
            "period and in-call keys are not stated here."
        ),
        "gap.language": lambda f: (
            f"This summary is in '{f['used']}': it is not available in '{f['requested']}'."
        ),
    }


def _sv() -> dict[str, Sentence]:
    basis = BASIS_WORDS["sv"]

    def platforms(f: Mapping[str, Any]) -> str:
        return _join([PLATFORM_WORDS["sv"].get(p, p) for p in f["platforms"]], "sv")

    def number(f: Mapping[str, Any]) -> str:
        how = {
            "public_key": "förseglat till den personuppgiftsansvariges egen nyckel, som "
            "tjänsten inte kan öppna",
            "local": "krypterat med den personuppgiftsansvariges nyckel",
        }.get(f["key_custody"] or "", "krypterat")
        return (
            f"Ditt telefonnummer (nummerpresentation), för vart och ett av de {f['calls']} "
            f"samtal som listas ovan: sparat {how}, med en nyckelad hash av det som används för "
            "att hitta dina samtal."
        )

    def voice(f: Mapping[str, Any]) -> str:
        agent = (
            f"; {f['with_agent']} av dem innehåller också rösten hos den som svarade"
            if f["with_agent"]
            else ""
        )
        return f"Röstinspelningar av dina samtal: {f['recordings']} inspelning(ar){agent}."

    def retention_line(source: str) -> Sentence:
        why = {
            "line": "den tid som är angiven för linjen",
            "controller": "den personuppgiftsansvariges tid för inspelningar med denna grund",
            "default": "tjänstens standardtid för denna rättsliga grund",
        }[source]
        return lambda f: (
            f"Inspelningar av samtal till {f['line']} (rättslig grund: "
            f"{basis[f['lawful_basis']]}) sparas i {f['days']} dagar från inspelningens start "
            f"({why}) och raderas sedan automatiskt; tjänsten kontrollerar vad som ska raderas "
            f"var {f['sweep_minutes']}:e minut."
        )

    def processor(f: Mapping[str, Any], does: str) -> str:
        name = f["name"] or "Den som driver inspelningstjänsten"
        contact = f" ({f['contact']})" if f.get("contact") else ""
        return f"{name}{contact}, personuppgiftsbiträdet, {does}."

    def objection(f: Mapping[str, Any]) -> str:
        bases = _join([basis[b] for b in f["lawful_bases"]], "sv")
        out = (
            f"När dina uppgifter behandlas med stöd av {bases} kan du när som helst invända, av "
            "skäl som har samband med din särskilda situation (art. 21.1); den "
            "personuppgiftsansvarige måste då sluta, om den inte visar tvingande berättigade "
            "skäl som väger tyngre än dina intressen eller behöver uppgifterna för rättsliga "
            "anspråk."
        )
        if f["decline_keys"]:
            out += (
                " Under ett samtal kan du invända medan meddelandet spelas genom att trycka "
                f"{_keys(f['decline_keys'], 'sv', 'på')}."
            )
        return out

    def withdraw(f: Mapping[str, Any]) -> str:
        out = (
            "Du kan när som helst återkalla ditt samtycke, lika lätt som du gav det (art. 7.3); "
            "det gör inte det som redan gjorts olagligt."
        )
        return out

    return {
        "purpose": lambda f: (
            f"Ändamål: {_join(f['purposes'], 'sv')}; rättslig grund: "
            f"{basis[f['lawful_basis']]} (GDPR {_article_sv(f['basis_article'])})."
        ),
        "purpose.call_record": lambda f: (
            "En uppgift om varje samtal (när, till vilken linje, hur det slutade), som sparas "
            "med ditt nummer en begränsad tid så att dina samtal kan hittas igen, till exempel "
            "för att besvara en begäran som denna."
        ),
        "category.number": number,
        "category.call_metadata": lambda f: (
            "Uppgifter om samtalen: tid, vilken linje som ringdes, vilken telefoniplattform "
            "som förmedlade samtalet och dess id för samtalet, och hur samtalet slutade."
        ),
        "category.voice": voice,
        "category.consent_evidence": lambda f: (
            f"Vad du fick höra och vad du valde, för {f['recordings']} inspelning(ar): "
            "meddelandet eller frågan som spelades upp (orden och ett fingeravtryck av ljudet), "
            "vilka knappar du tryckte och när."
        ),
        "category.access_log": lambda f: (
            "En logg över vem som spelat upp, exporterat, bevarat eller raderat dina "
            f"inspelningar, när och varför ({f['entries']} poster)."
        ),
        "recipient.controller": lambda f: (
            f"{f['name']}, personuppgiftsansvarig, som bestämmer varför dina samtal spelas in; "
            f"dess dataskyddsombud: {f['dpo_contact']}."
        ),
        "recipient.processor.keys": lambda f: processor(
            f,
            "som driver inspelningstjänsten åt den personuppgiftsansvarige, lagrar "
            "inspelningarna och har nycklarna till dem; varje uppspelning och export loggas "
            "med ett skäl",
        ),
        "recipient.processor.sealed": lambda f: processor(
            f,
            "som driver inspelningstjänsten åt den personuppgiftsansvarige och lagrar "
            "inspelningarna och ditt nummer, men inte kan dekryptera dem: de är förseglade "
            "till den personuppgiftsansvariges egen nyckel",
        ),
        "recipient.processor": lambda f: processor(
            f, "som driver inspelningstjänsten åt den personuppgiftsansvarige"
        ),
        "recipient.twilio": lambda f: (
            f"Twilio, teleoperatören som kopplade {f['calls']} av dina samtal till tjänsten: "
            "den får ditt nummer och samtalets ljud för att förmedla det, och dess egen "
            "samtalslogg behåller ditt nummer tills det raderas där."
        ),
        "transfer.twilio": lambda f: (
            "Twilio Inc. är etablerat i USA: fråga den personuppgiftsansvarige om dess "
            "förmedling av dina samtal är en överföring till tredjeland och vilka skyddsåtgärder "
            "som gäller (art. 46)."
        ),
        "recipient.asterisk": lambda f: (
            "Den som driver Asterisk-växeln"
            + (f" på {f['host']}" if f["host"] else "")
            + f" som kopplade {f['calls']} av dina samtal till tjänsten: den får ditt nummer "
            "och samtalets ljud för att förmedla det, och dess egen samtalslogg behåller ditt "
            "nummer tills det raderas där."
        ),
        "recipient.platform": lambda f: (
            f"Telefoniplattformen '{f['platform']}', som förmedlade {f['calls']} av dina samtal."
        ),
        "retention.line.line": retention_line("line"),
        "retention.line.controller": retention_line("controller"),
        "retention.line.default": retention_line("default"),
        "retention.recording": lambda f: (
            f"Inspelning {f['recording']}: sparas till {_date(f['until'])}."
        ),
        "retention.legal_hold": lambda f: (
            f"Inspelning {f['recording']} omfattas av ett bevarandebeslut ({f['reason']}): den "
            "sparas efter det datumet tills beslutet hävs."
        ),
        "retention.call_record": lambda f: (
            "Ditt nummer och plattformens id för samtalet tas bort från uppgiften om ett samtal "
            "vid samma automatiska kontroll "
            f"när samtalet är mer än {f['days']} dagar gammalt och inget inspelat från det "
            "längre sparas; samtalets tid, linje och utfall finns kvar, utan ditt nummer. "
            "Datumet för varje samtal står i tabellen över samtal."
        ),
        "retention.access_log": lambda f: (
            "Loggen över vem som har kommit åt dina inspelningar sparas som underlag för "
            "ansvarsskyldigheten, utan slutdatum; den anger inspelningarnas id, inte ditt "
            "nummer."
        ),
        "right.contact": lambda f: (
            "Kontakta den personuppgiftsansvariges dataskyddsombud för att använda någon av "
            f"dessa rättigheter: {f['dpo_contact']}."
            if f["dpo_contact"]
            else "Kontakta den personuppgiftsansvarige för att använda någon av dessa rättigheter."
        ),
        "right.rectification": lambda f: (
            "Du kan begära att felaktiga uppgifter om dig rättas och att ofullständiga "
            "uppgifter kompletteras, till exempel med ett eget yttrande (art. 16)."
        ),
        "right.erasure": lambda f: (
            "Du kan begära att dina uppgifter raderas (art. 17). Radering gör en inspelning "
            "oläslig i tjänsten direkt (dess nyckel förstörs och ljudet raderas) och tar bort "
            "ditt nummer och telefoniplattformens id för samtalet från uppgifterna om dina "
            "samtal."
        ),
        "right.erasure.backups.scheduled": lambda f: (
            "Kopior i tjänstens säkerhetskopior blir oläsliga senast "
            f"{f['days']} dagar efter en radering, när nyckeln som skyddade dem förstörs enligt "
            "tjänstens schema."
        ),
        "right.erasure.backups.unscheduled": lambda f: (
            "Kopior i tjänstens säkerhetskopior går att läsa tills den som driver tjänsten "
            "förstör nyckeln som skyddade dem: tjänstens konfiguration anger inget datum för det."
        ),
        "right.erasure.backups.sealed": lambda f: (
            "Kopior i tjänstens säkerhetskopior förblir förseglade till den "
            "personuppgiftsansvariges egen nyckel; tjänsten kan inte läsa dem, och de blir "
            "oläsliga när den personuppgiftsansvarige förstör nyckeln."
        ),
        "right.erasure.limited": lambda f: (
            "När dina uppgifter behandlas med stöd av "
            f"{_join([basis[b] for b in f['lawful_bases']], 'sv')} får den "
            "personuppgiftsansvarige behålla dem så länge det kräver (art. 17.3 b)."
        ),
        "right.erasure.legal_hold": lambda f: (
            f"Inspelning(ar) {_join(f['recordings'], 'sv')} omfattas av ett bevarandebeslut: "
            "de sparas, även på begäran, tills beslutet hävs (art. 17.3)."
        ),
        "right.restriction": lambda f: (
            "Du kan begära att användningen av dina uppgifter begränsas, till exempel medan du "
            "bestrider att de är korrekta eller medan en invändning prövas (art. 18)."
        ),
        "right.objection": objection,
        "right.withdraw_consent": withdraw,
        "right.portability": lambda f: (
            "För inspelningar som gjorts med stöd av "
            f"{_join([basis[b] for b in f['lawful_bases']], 'sv')} "
            f"({_join(f['recordings'], 'sv')}) har du rätt att få dem i ett strukturerat, "
            "allmänt använt och maskinläsbart format och att få dem överförda till en annan "
            "personuppgiftsansvarig (art. 20); exportens WAV- och JSON-filer är ett sådant "
            "format."
        ),
        "complaint": lambda f: (
            "Du kan klaga hos en tillsynsmyndighet, särskilt i det EU-land där du bor, där du "
            "arbetar eller där den påstådda överträdelsen skedde (art. 77); i Sverige är det "
            "Integritetsskyddsmyndigheten (IMY)."
        ),
        "source.call": lambda f: (
            "Allt här samlades in från dig under dina samtal: ditt nummer så som det "
            f"presenterades för tjänsten av {platforms(f)} (nummerpresentation), "
            + ("vad du sa " if f["recordings"] else "")
            + "och vilka knappar du tryckte."
        ),
        "source.import": lambda f: (
            f"Inspelning(ar) {_join(f['recordings'], 'sv')} importerades till tjänsten från en "
            "fil av den som driver den."
        ),
        "automated.none": lambda f: (
            "Det finns inget automatiserat beslutsfattande om dig, inklusive profilering "
            "(art. 22): tjänstens enda automatiska steg är att starta en inspelning, eller "
            "inte, enligt linjens regler och de knappar du tryckte."
        ),
        "gap.controller_not_configured": lambda f: (
            f"Konfigurationen ({f['configuration']}) beskriver inte den personuppgiftsansvarige "
            f"'{f['controller']}': namn, kontakt, lagringstider och knappar under samtalet "
            "anges inte här."
        ),
        "gap.line_not_configured": lambda f: (
            f"Linjen med policyn '{f['line']}' finns inte i konfigurationen: dess lagringstid "
            "och knappar under samtalet anges inte här."
        ),
        "gap.language": lambda f: (
            f"Den här sammanfattningen är på '{f['used']}': den finns inte på '{f['requested']}'."
        ),
    }


def _article_sv(article: str) -> str:
    """ "Art. 6(1)(a)" as Swedish texts cite it: "art. 6.1 a"."""
    text = article.replace("Art. ", "art. ")
    head, _, rest = text.partition("(")
    if not rest:
        return text
    parts = [p.rstrip(")") for p in ("(" + rest).split("(") if p]
    number = head.strip() + "." + parts[0]
    return " ".join([number, *parts[1:]])


SENTENCES: Mapping[str, Mapping[str, Sentence]] = {"en": _en(), "sv": _sv()}

# Which part of the summary each statement belongs to, by the start of its kind.
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("a", ("purpose",)),
    ("b", ("category.",)),
    ("c", ("recipient.", "transfer.")),
    ("d", ("retention.",)),
    ("e", ("right.",)),
    ("f", ("complaint",)),
    ("g", ("source.",)),
    ("h", ("automated.",)),
    ("gaps", ("gap.",)),
)


def sentence(statement: Statement, lang: str) -> str:
    try:
        say = SENTENCES[lang][statement.kind]
    except KeyError:
        raise KeyError(f"no {lang} sentence for statement kind {statement.kind!r}") from None
    return say(statement.facts)


# --------------------------------------------------------------------------- the document


@dataclass(frozen=True, slots=True)
class Table:
    head: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


Block = str | Table


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    blocks: tuple[Block, ...]
    level: int = 2


def _call_rows(calls: Sequence[CallEntry], lang: str) -> Table:
    w, outcome = WORDS[lang], OUTCOME_WORDS[lang]
    rows = []
    for c in calls:
        removed = (
            _date(c.number_removed_after)
            if c.number_removed_after
            else w["legal_hold"]
            if c.number_kept_because == "legal_hold"
            else w["no_date"]
        )
        rows.append(
            (
                _when(c.call.started_at),
                _join(c.line_numbers, lang) or c.call.line or w["none"],
                PLATFORM_WORDS[lang].get(c.call.platform, c.call.platform),
                outcome.get(c.call.outcome or "", c.call.outcome or w["none"]),
                c.call.end_reason or w["none"],
                ", ".join(c.recordings) or w["none"],
                removed,
            )
        )
    head = ("when", "line", "platform", "outcome", "end_reason", "recording", "number_until")
    return Table(tuple(w[k] for k in head), tuple(rows))


def _recording_rows(recordings: Sequence[RecordingEntry], lang: str) -> Table:
    w, basis = WORDS[lang], BASIS_WORDS[lang]
    outcome = OUTCOME_WORDS[lang]
    rows = []
    for r in recordings:
        row = r.row
        decision = (row.consent_evidence or {}).get("decision")
        audio = {
            Audio.INCLUDED: r.audio_file or w["none"],
            Audio.SEALED: w["audio_sealed"],
            Audio.NONE: w["audio_none"],
        }[r.audio]
        rows.append(
            (
                row.id,
                _when(row.started_at),
                _duration(row.duration_ms),
                basis.get(row.lawful_basis, row.lawful_basis),
                row.purpose,
                outcome.get(str(decision), str(decision)) if decision else w["none"],
                row.status.value,
                _date(row.retention_until),
                audio,
            )
        )
    head = (
        "recording",
        "when",
        "duration",
        "basis",
        "purpose",
        "choice",
        "status",
        "kept_until",
        "audio",
    )
    return Table(tuple(w[k] for k in head), tuple(rows))


def _access_rows(report: AccessReport, lang: str) -> Table:
    w = WORDS[lang]
    rows = [
        (_when(e.at), r.row.id, e.action, e.actor, e.reason or w["none"])
        for r in report.recordings
        for e in r.access_log
    ]
    return Table((w["when"], w["recording"], w["action"], w["by"], w["reason"]), tuple(rows))


def document(report: AccessReport) -> tuple[str, tuple[Section, ...]]:
    """The summary as sections of paragraphs and tables, in the report's language."""
    lang = report.language
    w = WORDS[lang]
    names = [c.name for c in report.controllers]
    intro = [
        w["intro"].format(
            controllers=_join(names, lang) or w["none"],
            phone=report.phone,
            now=_when(report.generated_at),
            calls=len(report.calls),
            recordings=len(report.recordings),
        )
    ]
    if report.sealed:
        intro.append(w["sealed_intro"].format(sealed=len(report.sealed)))
    sections = [Section(w["title"], tuple(intro), level=1)]
    sections.append(
        Section(w["calls"], (_call_rows(report.calls, lang),) if report.calls else (w["no_calls"],))
    )
    sections.append(
        Section(
            w["recordings"],
            (_recording_rows(report.recordings, lang),)
            if report.recordings
            else (w["no_recordings"],),
        )
    )
    access = _access_rows(report, lang)
    if access.rows:
        sections.append(Section(w["accessed"], (access,)))
    if report.requests:
        sections.append(
            Section(
                w["requests"],
                (
                    Table(
                        (w["when"], w["action"], w["by"], w["reason"]),
                        tuple(
                            (_when(e.at), e.action, e.actor, e.reason or w["none"])
                            for e in report.requests
                        ),
                    ),
                ),
            )
        )
    for controller in report.controllers:
        sections.append(Section(f"{w['controller']}: {controller.name}", (), level=2))
        for key, prefixes in SECTIONS:
            said = [sentence(s, lang) for s in controller.statements if s.kind.startswith(prefixes)]
            if said:
                sections.append(Section(w[key], tuple(said), level=3))
    for key, prefixes in SECTIONS:
        said = [sentence(s, lang) for s in report.common if s.kind.startswith(prefixes)]
        if said:
            sections.append(Section(w[key], tuple(said), level=2))
    return w["title"], tuple(sections)


def render_html(report: AccessReport) -> str:
    e = html.escape
    title, sections = document(report)
    body = []
    for section in sections:
        body.append(f"<h{section.level}>{e(section.title)}</h{section.level}>")
        for block in section.blocks:
            if isinstance(block, Table):
                head = "".join(f"<th>{e(h)}</th>" for h in block.head)
                rows = "".join(
                    "<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
                    for row in block.rows
                )
                body.append(f"<table><tr>{head}</tr>{rows}</table>")
            else:
                body.append(f"<p>{e(block)}</p>")
    return (
        f'<!doctype html><html lang="{e(report.language)}"><head><meta charset="utf-8">'
        f"<title>{e(title)}</title></head><body>{''.join(body)}</body></html>\n"
    )


def render_text(report: AccessReport) -> str:
    _, sections = document(report)
    out: list[str] = []
    for section in sections:
        mark = {1: "=", 2: "-", 3: "~"}[section.level]
        out += ["", section.title, mark * len(section.title)]
        for block in section.blocks:
            if isinstance(block, Table):
                for row in block.rows:
                    out.append(
                        "- " + "; ".join(f"{h}: {c}" for h, c in zip(block.head, row, strict=True))
                    )
            else:
                out.append(block)
    return "\n".join(out).lstrip("\n") + "\n"
