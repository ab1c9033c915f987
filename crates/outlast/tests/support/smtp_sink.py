"""A real SMTP server for tests: accepts every message on 127.0.0.1:PORT and writes it to
DIR/msg-N.eml. Uses aiosmtpd when installed, else the standard library's smtpd (3.11)."""
import os
import sys
import time
import warnings

out_dir, port = sys.argv[1], int(sys.argv[2])
count = 0


def write(mail_from, rcpt_tos, data):
    global count
    count += 1
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    path = os.path.join(out_dir, "msg-%d.eml" % count)
    with open(path + ".tmp", "w") as f:
        f.write("X-Envelope-From: %s\nX-Envelope-To: %s\n%s" % (mail_from, ",".join(rcpt_tos), data))
    os.rename(path + ".tmp", path)


try:
    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            write(envelope.mail_from, envelope.rcpt_tos, envelope.content)
            return "250 OK"

    Controller(Handler(), hostname="127.0.0.1", port=port).start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)
except ImportError:
    warnings.simplefilter("ignore", DeprecationWarning)
    import asyncore
    import smtpd

    class Server(smtpd.SMTPServer):
        def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
            write(mailfrom, rcpttos, data)

    Server(("127.0.0.1", port), None)
    print("ready", flush=True)
    asyncore.loop()
