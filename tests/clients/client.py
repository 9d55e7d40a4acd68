#!/usr/bin/env python3
"""A slixmpp client driven by JSON lines, for the Custos end-to-end harness.

Commands arrive on stdin, one JSON object per line, each with an "id" that
its reply echoes:

  {"id": 1, "cmd": "connect", "jid": ..., "password": ..., "host": ...,
   "port": ..., "tls": "starttls"|"direct", "ca_file": ..., "sm": bool}
  {"id": 2, "cmd": "send_message", "to": ..., "body": ..., "type": ...,
   "msg_id": ..., "subject": ..., "thread": ...}
  {"id": 3, "cmd": "send_presence", "to": ..., "type": ..., "show": ...,
   "status": ...}
  {"id": 4, "cmd": "roster_get"}
  {"id": 5, "cmd": "roster_set", "jid": ..., "name": ...}
  {"id": 6, "cmd": "ping", "jid": ..., "timeout": seconds}
  {"id": 7, "cmd": "sm_state"}
  {"id": 8, "cmd": "sm_request_ack"}
  {"id": 9, "cmd": "disconnect"}

Replies: {"reply": id, "ok": true, ...} or {"reply": id, "ok": false,
"error": "..."}. Unsolicited events: {"event": "message" | "message_error" |
"presence" | "disconnected", ...}.

TLS certificates are always verified against the given CA file.
"""

import asyncio
import json
import xml.etree.ElementTree as ET
import logging
import sys

try:
    import slixmpp
    from slixmpp import JID
    from slixmpp.exceptions import IqError, IqTimeout, PresenceError
except ImportError as exc:  # pragma: no cover - environment problem
    sys.stderr.write(f"slixmpp is not importable ({exc}); run scripts/setup.sh\n")
    sys.exit(3)


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


STANZAS_NS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"


def stanza_error(stanza):
    err = stanza["error"]
    # slixmpp only reports conditions from its own list, which lacks some of RFC 6120's
    # (policy-violation among them); read the defined condition from the XML instead.
    condition = err["condition"]
    if not condition:
        for child in err.xml:
            if child.tag.startswith(STANZAS_NS) and child.tag != STANZAS_NS + "text":
                condition = child.tag[len(STANZAS_NS):]
                break
    return {"condition": condition, "text": err["text"], "error_type": err["type"]}


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password, ca_file, tls, sm):
        super().__init__(jid, password)
        # Exactly one transport: the harness chooses STARTTLS or Direct TLS
        # (XEP-0368) explicitly, and plaintext is never allowed.
        self.enable_direct_tls = tls == "direct"
        self.enable_starttls = tls == "starttls"
        self.enable_plaintext = False
        self.ca_certs = ca_file
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199")
        self.register_plugin("xep_0045")
        if sm:
            self.register_plugin("xep_0198")
        self.online = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", self.on_session_start)
        self.add_event_handler("failed_auth", self.on_failure("authentication failed"))
        self.add_event_handler("connection_failed", self.on_connection_failed)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("message_error", self.on_message)
        self.add_event_handler("presence", self.on_presence)
        self.add_event_handler("disconnected", self.on_disconnected)
        self.add_event_handler("stream_error", self.on_stream_error)

    def on_failure(self, reason):
        def handler(_event):
            if not self.online.done():
                self.online.set_result(reason)
        return handler

    def on_connection_failed(self, err):
        if not self.online.done():
            self.online.set_result(f"connection failed: {err}")
        # slixmpp would retry forever; one attempt is what a test wants.
        self.cancel_connection_attempt()

    def on_stream_error(self, err):
        emit({"event": "stream_error", "condition": err["condition"], "text": err["text"]})

    async def on_session_start(self, _event):
        roster_ok = True
        try:
            await self.get_roster(timeout=10)
        except (IqError, IqTimeout):
            roster_ok = False
        self.send_presence()
        # The server handles a stream's stanzas in order: once it answers a ping sent
        # after the presence, the presence has been processed and messages to the bare
        # JID reach this resource instead of the offline store.
        try:
            await self.plugin["xep_0199"].ping(jid=self.boundjid.domain, timeout=10)
        except (IqError, IqTimeout):
            pass
        if not self.online.done():
            self.online.set_result(None if roster_ok else "roster fetch failed")

    def on_message(self, msg):
        if msg["type"] == "error":
            event = {"event": "message_error", "from": str(msg["from"]), "id": msg["id"]}
            event.update(stanza_error(msg))
            emit(event)
            return
        emit({
            "event": "message",
            "from": str(msg["from"]),
            "to": str(msg["to"]),
            "type": msg["type"],
            "id": msg["id"] or None,
            "body": msg["body"],
            "subject": msg["subject"] or None,
            "thread": msg["thread"] or None,
        })

    def on_presence(self, pres):
        event = {
            "event": "presence",
            "from": str(pres["from"]),
            "to": str(pres["to"]),
            "type": pres["type"],
            "show": pres["show"] or None,
            "status": pres["status"] or None,
        }
        if pres["type"] == "error":
            event.update(stanza_error(pres))
        emit(event)

    def on_disconnected(self, reason):
        emit({"event": "disconnected", "reason": str(reason)})
        if not self.online.done():
            self.online.set_result(f"disconnected: {reason}")


class Driver:
    def __init__(self):
        self.client = None

    async def connect(self, req):
        if self.client is not None:
            raise ValueError("already connected")
        self.client = Client(req["jid"], req["password"], req["ca_file"],
                             req["tls"], req.get("sm", False))
        self.client.connect(host=req["host"], port=int(req["port"]))
        failure = await self.client.online
        if failure is not None:
            raise RuntimeError(failure)
        return {"jid": str(self.client.boundjid)}

    def need(self):
        if self.client is None:
            raise ValueError("not connected")
        return self.client

    async def send_message(self, req):
        c = self.need()
        msg = c.make_message(mto=req["to"], mbody=req["body"],
                             mtype=req.get("type") or "chat",
                             msubject=req.get("subject"))
        if req.get("msg_id"):
            msg["id"] = req["msg_id"]
        if req.get("thread"):
            msg["thread"] = req["thread"]
        # Extra child elements as raw XML (an end-to-end encryption payload, say).
        for xml in req.get("payloads") or []:
            msg.append(ET.fromstring(xml))
        msg.send()
        return {"msg_id": msg["id"]}

    async def send_presence(self, req):
        c = self.need()
        c.send_presence(pto=req.get("to"), ptype=req.get("type"),
                        pshow=req.get("show"), pstatus=req.get("status"))
        return {}

    async def join_room(self, req):
        # XEP-0045 entry, waiting for the room's own presence (status 110) or its error.
        # The error is read from the presence itself: slixmpp cannot build its exception
        # for conditions outside its own list (policy-violation among them).
        c = self.need()
        room = JID(req["room"])
        refused = []

        def on_error(pres):
            if pres["from"].bare == room.bare:
                refused.append(pres)

        c.add_event_handler("presence_error", on_error)
        try:
            await c.plugin["xep_0045"].join_muc_wait(
                room, req["nick"], maxstanzas=0, timeout=float(req.get("timeout", 10)))
        except (PresenceError, ValueError):
            if not refused:
                raise
            result = {"joined": False}
            result.update(stanza_error(refused[-1]))
            return result
        finally:
            c.del_event_handler("presence_error", on_error)
        return {"joined": True}

    async def share_file(self, req):
        # XEP-0363: ask the upload service for a slot, PUT the file, then send its address
        # as Conversations does (the body is the address, with an out-of-band element).
        c = self.need()
        if "xep_0363" not in c.plugin:
            c.register_plugin("xep_0066")
            c.register_plugin("xep_0363")
        url = await c.plugin["xep_0363"].upload_file(
            req["path"], content_type=req.get("content_type"),
            domain=JID(req["service"]), timeout=10)
        msg = c.make_message(mto=req["to"], mbody=url, mtype=req.get("type") or "chat")
        msg["oob"]["url"] = url
        msg.send()
        return {"url": url, "msg_id": msg["id"]}

    async def leave_room(self, req):
        c = self.need()
        c.plugin["xep_0045"].leave_muc(JID(req["room"]), req["nick"])
        return {}

    async def roster_get(self, _req):
        c = self.need()
        await c.get_roster(timeout=10)
        roster = c.client_roster
        items = []
        for jid in roster:
            item = roster[jid]
            items.append({
                "jid": str(jid),
                "name": item["name"] or None,
                "subscription": item["subscription"],
                "groups": list(item["groups"]),
            })
        return {"items": items}

    async def roster_set(self, req):
        c = self.need()
        await c.update_roster(req["jid"], name=req.get("name"), timeout=10)
        return {}

    async def ping(self, req):
        c = self.need()
        try:
            rtt = await c.plugin["xep_0199"].ping(jid=req["jid"],
                                                 timeout=req.get("timeout", 5))
            return {"result": "pong", "rtt": rtt}
        except IqError as exc:
            out = {"result": "error"}
            out.update(stanza_error(exc.iq))
            return out
        except IqTimeout:
            return {"result": "timeout"}

    async def sm_state(self, _req):
        c = self.need()
        if "xep_0198" not in c.plugin:
            return {"enabled": False}
        sm = c.plugin["xep_0198"]
        return {
            "enabled": bool(sm.enabled_in),
            "id": sm.sm_id,
            "handled": sm.handled,
            "sent": sm.seq,
            "acked": sm.last_ack,
            "unacked": len(sm.unacked_queue),
        }

    async def sm_request_ack(self, _req):
        c = self.need()
        if "xep_0198" not in c.plugin:
            raise ValueError("stream management not enabled")
        c.plugin["xep_0198"].request_ack()
        return {}

    async def sm_drop(self, _req):
        """Drops the TCP connection without closing the stream, as a network failure
        would, keeping the stream-management state for a resumption."""
        c = self.need()
        sm = c.plugin["xep_0198"] if "xep_0198" in c.plugin else None
        if sm is None or not sm.sm_id:
            raise ValueError("no resumable stream-management session")
        gone = asyncio.get_event_loop().create_future()

        def on_gone(_event):
            if not gone.done():
                gone.set_result(None)
        c.add_event_handler("disconnected", on_gone, disposable=True)
        c.abort()
        await asyncio.wait_for(gone, 10)
        return {"id": sm.sm_id, "handled": sm.handled}

    async def sm_resume(self, req):
        """Connects again and waits for the session to be resumed, or says how it ended
        instead: `failed` (the server refused) or `new-session` (a fresh login)."""
        c = self.need()
        outcome = asyncio.get_event_loop().create_future()

        def settle(value):
            def handler(_event):
                if not outcome.done():
                    outcome.set_result(value)
            return handler
        c.add_event_handler("session_resumed", settle("resumed"), disposable=True)
        c.add_event_handler("sm_failed", settle("failed"), disposable=True)
        c.add_event_handler("session_start", settle("new-session"), disposable=True)
        c.add_event_handler("connection_failed", settle("connection-failed"), disposable=True)
        c.connect(host=req["host"], port=int(req["port"]))
        result = await asyncio.wait_for(outcome, req.get("timeout", 8))
        sm = c.plugin["xep_0198"]
        return {"result": result, "id": sm.sm_id, "handled": sm.handled}

    async def disconnect(self, _req):
        c = self.need()
        await c.disconnect()
        return {}


async def main():
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    loop = asyncio.get_event_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    driver = Driver()
    tasks = set()

    async def handle(req):
        rid = req.get("id")
        try:
            fn = getattr(driver, req["cmd"])
            result = await fn(req)
            result["reply"] = rid
            result["ok"] = True
            emit(result)
        except Exception as exc:  # reported to the harness, which fails the test
            emit({"reply": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}"})

    while True:
        line = await reader.readline()
        if not line:
            break
        try:
            req = json.loads(line)
        except ValueError as exc:
            emit({"reply": None, "ok": False, "error": f"bad json: {exc}"})
            continue
        # Commands run concurrently so a slow ping does not block a send.
        task = asyncio.ensure_future(handle(req))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


if __name__ == "__main__":
    asyncio.run(main())
