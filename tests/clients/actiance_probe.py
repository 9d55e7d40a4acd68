"""Parses an Actiance XML file with Python's XML parser (malformed XML raises) and prints
its conversations as JSON: room, participants entering and leaving, messages, files."""
import json
import sys
import xml.etree.ElementTree as ET


def text(el, tag):
    found = el.find(tag)
    return found.text if found is not None and found.text is not None else ""


def main():
    root = ET.parse(sys.argv[1]).getroot()
    if root.tag != "FileDump":
        raise SystemExit(f"root is {root.tag}, not FileDump")
    out = []
    for conv in root.findall("Conversation"):
        out.append({
            "perspective": conv.get("Perspective"),
            "room": text(conv, "RoomID"),
            "start": int(text(conv, "StartTimeUTC")),
            "end": int(text(conv, "EndTimeUTC")),
            "entered": [text(p, "LoginName") for p in conv.findall("ParticipantEntered")],
            "left": [text(p, "LoginName") for p in conv.findall("ParticipantLeft")],
            "internal": {text(p, "LoginName"): text(p, "InternalFlag") for p in conv.findall("ParticipantEntered")},
            "messages": [{"login": text(m, "LoginName"), "time": int(text(m, "DateTimeUTC")),
                          "content": text(m, "Content")} for m in conv.findall("Message")],
            "files": [text(f, "FileName") for f in conv.findall("FileTransferStarted")],
            "order": [child.tag for child in conv],
        })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
