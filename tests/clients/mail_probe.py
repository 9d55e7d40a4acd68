"""Reads a Maildir the test SMTP server filled and prints one JSON object per message,
parsed strictly by Python's `email` package (policy=default): Message-ID, From, To,
Subject, the X-Custos headers and the plain-text body."""
import email
import email.policy
import json
import mailbox
import sys


def main():
    box = mailbox.Maildir(sys.argv[1], factory=None, create=False)
    for key in sorted(box.keys()):
        with box.get_file(key) as f:
            msg = email.message_from_binary_file(f, policy=email.policy.default)
        defects = [str(d) for d in msg.defects]
        body = msg.get_body(preferencelist=("plain",))
        print(json.dumps({
            "message_id": str(msg["Message-ID"]),
            "from": str(msg["From"]),
            "to": str(msg["To"]),
            "subject": str(msg["Subject"]),
            "participants": str(msg["X-Custos-Participants"]),
            "period": str(msg["X-Custos-Period"]),
            "date": str(msg["Date"]),
            "body": body.get_content() if body is not None else None,
            "defects": defects,
        }))


if __name__ == "__main__":
    main()
