// The echomesh test harness around Smoke's own Cryptography, Messages and SipHash (compiled
// from ../shared/third-party/smoke in the test setup). One command per line on stdin, one
// answer per line on stdout: "ok [fields...]" or "err <reason>". Binary fields and whole
// frames are base-64 (no wraps). Frames are built by Smoke's Messages; the transmit-time ozone
// rewrite (Smoke's Neighbor, Android) and the receive path (Smoke's Kernel.ourMessage,
// Android) cannot be compiled, so this class follows their steps with Cryptography's own
// primitives, and says so at each.
//
// Commands:
//   init <ec|rsa> <rsa-bits>     new key pairs (RSA encryption, EC P-384 or RSA signature);
//                                answers with the SipHash ID
//   ozone <address>              the ozone (Settings.generateOzone's steps)
//   epks                         this participant's EPKS frame (its own SipHash stream)
//   share-id                     a share-SipHash-ID 0x02 frame (ozone-addressed)
//   pkp <siphash-id>             a PKP 0x01 request for that ID's keys
//   accept-epks <frame>          Smoke's receive steps for an EPKS frame addressed to us:
//                                keys verified and remembered; answers with their SipHash ID
//   chat-stream <id> <stream>    the 96-byte chat key stream shared with participant <id>
//   chat <id> <text>             Smoke's ozone copy of a chat message to <id>, tagged for this
//                                minute as Neighbor does at transmit time
//   retrieve                     the 0095a identity frame and the 0x00 retrieval frame
//   forge-retrieve <stale|badsig>  a retrieval that must be refused, made with Smoke's primitives
//   open <frame>                 a released message: destination checked against the
//                                retrieval identity, then Kernel.ourMessage's chat steps;
//                                answers with the text and SHA-512(data)
//   confirm <frame>              a server's 0x03 confirmation of our shared SipHash ID
//   read <digest>                the 0x04 read receipt for a released message
//   login <challenge>            the 0097b answer to a server's 0097a
//   quit
package org.purple.smoke;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.security.KeyPair;
import java.security.PublicKey;
import java.security.Security;
import java.util.Arrays;
import java.util.Base64;
import java.util.HashMap;
import java.util.Map;

public final class SmokeHarness {
    private static final Base64.Encoder B64 = Base64.getEncoder();
    private static final Base64.Decoder D64 = Base64.getDecoder();

    private final Cryptography c = Cryptography.getInstance();
    private final Map<String, byte[]> chatStreams = new HashMap<>();
    // Participants whose keys we accepted: SipHash ID -> [encryption key, signature key].
    private final Map<String, PublicKey[]> keys = new HashMap<>();
    private long sequence = 1;

    public static void main(String[] args) throws Exception {
        // Smoke's builders need the full BouncyCastle provider first (the JDK has neither
        // AES/CBC/PKCS7Padding nor RSA/NONE/OAEP...); Smoke itself only adds BCPQC.
        Security.insertProviderAt(new org.bouncycastle.jce.provider.BouncyCastleProvider(), 1);
        SmokeHarness h = new SmokeHarness();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            line = line.trim();
            if (line.isEmpty()) continue;
            if (line.equals("quit")) break;
            String answer;
            try {
                answer = h.run(line.split(" "));
            } catch (Exception e) {
                answer = "err " + e.getClass().getSimpleName() + ": " + e.getMessage();
            }
            System.out.println(answer.replace('\n', ' '));
            System.out.flush();
        }
    }

    private static String b64(byte[] b) { return B64.encodeToString(b); }

    private static String frame(String message) {
        return b64(message.getBytes(StandardCharsets.UTF_8));
    }

    private static byte[] content(String frameB64) {
        String f = new String(D64.decode(frameB64), StandardCharsets.UTF_8);
        int i = f.indexOf("content=");
        if (i < 0) throw new IllegalArgumentException("no content= in the frame");
        String rest = f.substring(i + 8);
        int end = rest.indexOf("\r\n\r\n\r\n");
        if (end >= 0) rest = rest.substring(0, end);
        return android.util.Base64.decode(rest.trim(), android.util.Base64.DEFAULT);
    }

    private static byte[] range(byte[] b, int from, int to) { return Arrays.copyOfRange(b, from, to); }

    private byte[] sipHashStream() {
        return Miscellaneous.joinByteArrays(c.sipHashEncryptionKey(), c.sipHashMacKey());
    }

    private String run(String[] a) throws Exception {
        switch (a[0]) {
        case "init": {
            KeyPair enc = Cryptography.generatePrivatePublicKeyPair("RSA", Integer.parseInt(a[2]), 0);
            KeyPair sig = a[1].equals("rsa")
                ? Cryptography.generatePrivatePublicKeyPair("RSA", 3072, 0)
                : Cryptography.generatePrivatePublicKeyPair("EC", 384, 0);
            if (enc == null || sig == null) return "err key generation failed";
            c.setChatEncryptionPublicKeyPair(enc);
            c.setChatSignaturePublicKeyPair(sig);
            if (!c.prepareSipHashIds("") || !c.prepareSipHashKeys()) return "err SipHash ID";
            return "ok " + c.sipHashId();
        }
        case "ozone": {
            // Settings.generateOzone's steps (Android UI class), with Smoke's primitives.
            String address = a[1].trim();
            byte[] salt = Cryptography.sha512(address.getBytes(StandardCharsets.UTF_8));
            byte[] t = Cryptography.pbkdf2(salt, address.toCharArray(), 4096, 160);
            byte[] stream = Cryptography.pbkdf2(salt,
                android.util.Base64.encodeToString(t, android.util.Base64.NO_WRAP).toCharArray(), 1,
                8 * (Cryptography.CIPHER_KEY_LENGTH + Cryptography.HASH_KEY_LENGTH));
            c.setOzoneEncryptionKey(range(stream, 0, Cryptography.CIPHER_KEY_LENGTH));
            c.setOzoneMacKey(range(stream, Cryptography.CIPHER_KEY_LENGTH, stream.length));
            return "ok";
        }
        case "epks": {
            byte[] b = Messages.epksMessage(c, c.sipHashId(), sipHashStream(), Messages.CHAT_KEY_TYPE);
            return b == null ? "err epksMessage returned null" : "ok " + frame(Messages.bytesToMessageString(b));
        }
        case "share-id": {
            byte[] b = Messages.shareSipHashIdMessage(c, c.sipHashId(), System.nanoTime());
            return b == null ? "err shareSipHashIdMessage returned null" : "ok " + frame(Messages.bytesToMessageString(b));
        }
        case "pkp": {
            byte[] b = Messages.pkpRequestMessage(c, a[1]);
            return b == null ? "err pkpRequestMessage returned null" : "ok " + frame(Messages.bytesToMessageString(b));
        }
        case "accept-epks": return acceptEpks(content(a[1]));
        case "chat-stream":
            chatStreams.put(a[1], D64.decode(a[2]));
            return "ok";
        case "chat": {
            byte[] stream = chatStreams.get(a[1]);
            if (stream == null) return "err no chat stream for " + a[1];
            String text = new String(D64.decode(a[2]), StandardCharsets.UTF_8);
            byte[] b = Messages.chatMessage(c, text, a[1], null, null, stream,
                Cryptography.randomBytes(64), sequence++, System.currentTimeMillis());
            if (b == null) return "err chatMessage returned null";
            // Neighbor's transmit-time rewrite of an "OZONE-" copy: the embedded SipHash ID is
            // replaced by HMAC(ozone MAC key, bytes || minute).
            byte[] minute = Miscellaneous.longToByteArray(System.currentTimeMillis() / 60000L);
            byte[] tagged = Miscellaneous.joinByteArrays(
                range(b, 0, b.length - Cryptography.SIPHASH_IDENTITY_LENGTH),
                Cryptography.hmac(Miscellaneous.joinByteArrays(b, minute), c.ozoneMacKey()));
            return "ok " + frame(Messages.bytesToMessageString(tagged));
        }
        case "retrieve": {
            String id = Messages.identityMessage(Kernel.getInstance().messageRetrievalIdentity());
            byte[] b = Messages.chatMessageRetrieval(c);
            return b == null ? "err chatMessageRetrieval returned null"
                : "ok " + frame(id) + " " + frame(Messages.bytesToMessageString(b));
        }
        case "forge-retrieve": {
            long ts = System.currentTimeMillis() - (a[1].equals("stale") ? 120_000L : 0L);
            byte[] bytes = Miscellaneous.joinByteArrays(Messages.CHAT_MESSAGE_RETRIEVAL,
                Miscellaneous.longToByteArray(ts), Kernel.getInstance().messageRetrievalIdentity(),
                c.chatEncryptionPublicKeyDigest());
            byte[] sig = c.signViaChatSignature(bytes);
            if (a[1].equals("badsig")) sig[sig.length / 2] ^= 0x55;
            byte[] ct = Cryptography.encrypt(Miscellaneous.joinByteArrays(bytes, sig), c.ozoneEncryptionKey());
            byte[] mac = Cryptography.hmac(ct, c.ozoneMacKey());
            return "ok " + frame(Messages.bytesToMessageString(Miscellaneous.joinByteArrays(ct, mac)));
        }
        case "open": return open(content(a[1]));
        case "confirm": return confirm(content(a[1]));
        case "read": {
            byte[] b = Messages.messageRead(c, D64.decode(a[1]));
            return b == null ? "err messageRead returned null" : "ok " + frame(Messages.bytesToMessageString(b));
        }
        case "login": {
            String m = Messages.authenticateMessage(c, a[1]);
            return m.isEmpty() ? "err authenticateMessage returned nothing" : "ok " + frame(m);
        }
        default: return "err unknown command " + a[0];
        }
    }

    // Kernel.ourMessage's EPKS branch: destination tag for our ID, MAC with our SipHash stream,
    // decrypt, then the seven fields with both signatures checked.
    private String acceptEpks(byte[] bytes) {
        int n = bytes.length, h = Cryptography.HASH_KEY_LENGTH;
        byte[] destination = range(bytes, n - h, n);
        byte[] mac = range(bytes, n - 2 * h, n - h);
        byte[] data = range(bytes, 0, n - 2 * h);
        if (!Cryptography.memcmp(destination, Cryptography.hmac(range(bytes, 0, n - h),
                Cryptography.sha512(c.sipHashId().getBytes(StandardCharsets.UTF_8)))))
            return "err not addressed to us";
        if (!Cryptography.memcmp(mac, Cryptography.hmac(data, c.sipHashMacKey())))
            return "err MAC does not match our SipHash stream";
        byte[] plain = Cryptography.decrypt(data, c.sipHashEncryptionKey());
        if (plain == null) return "err cannot decrypt";
        String[] f = new String(plain, StandardCharsets.UTF_8).split("\\n");
        if (f.length != 7) return "err " + f.length + " fields";
        String id = new String(D64.decode(f[2]), StandardCharsets.UTF_8);
        PublicKey enc = Cryptography.publicKeyFromBytes(D64.decode(f[3]));
        PublicKey sig = Cryptography.publicKeyFromBytes(D64.decode(f[5]));
        if (enc == null || sig == null) return "err undecodable keys";
        byte[] signed = Miscellaneous.joinByteArrays(id.getBytes(StandardCharsets.UTF_8),
            enc.getEncoded(), sig.getEncoded());
        if (!Cryptography.verifySignature(enc, D64.decode(f[4]), signed))
            return "err encryption key signature";
        if (!Cryptography.verifySignature(sig, D64.decode(f[6]), signed))
            return "err signature key signature";
        keys.put(id, new PublicKey[] {enc, sig});
        Database.getInstance().addParticipant(id, enc, "optional_signatures = false");
        return "ok " + id + " " + sig.getAlgorithm();
    }

    // Kernel.ourMessage's steps for a 0x03 confirmation: destination tag for our ID, the
    // ozone's MAC, decrypt with the ozone key; type 0x03 carrying our SipHash ID.
    private String confirm(byte[] bytes) {
        int n = bytes.length, h = Cryptography.HASH_KEY_LENGTH;
        if (n < 2 * h) return "err short";
        if (!Cryptography.memcmp(range(bytes, n - h, n), Cryptography.hmac(range(bytes, 0, n - h),
                Cryptography.sha512(c.sipHashId().getBytes(StandardCharsets.UTF_8)))))
            return "err not addressed to us";
        byte[] data = range(bytes, 0, n - 2 * h);
        if (!Cryptography.memcmp(range(bytes, n - 2 * h, n - h), Cryptography.hmac(data, c.ozoneMacKey())))
            return "err ozone MAC";
        byte[] plain = Cryptography.decrypt(data, c.ozoneEncryptionKey());
        if (plain == null || plain.length < 9 + Cryptography.SIPHASH_IDENTITY_LENGTH || plain[0] != 0x03)
            return "err not a 0x03 confirmation";
        String id = new String(range(plain, 9, 9 + Cryptography.SIPHASH_IDENTITY_LENGTH), StandardCharsets.UTF_8);
        return id.equals(c.sipHashId()) ? "ok " + id : "err confirms " + id;
    }

    // A released message: content = data || HMAC(retrieval identity, data). Then
    // Kernel.ourMessage's chat steps: PKI block -> sender's encryption key digest -> that
    // participant's chat stream; inner MAC; decrypt; signature over
    // digest || type || fields || SHA-512(our encryption key).
    private String open(byte[] bytes) throws Exception {
        int n = bytes.length, h = Cryptography.HASH_KEY_LENGTH;
        byte[] data = range(bytes, 0, n - h);
        if (!Cryptography.memcmp(range(bytes, n - h, n),
                Cryptography.hmac(data, Kernel.getInstance().messageRetrievalIdentity())))
            return "err not addressed to our retrieval identity";
        int pkiLen = ((java.security.interfaces.RSAPublicKey) c.chatEncryptionPublicKey()).getModulus().bitLength() / 8;
        byte[] pki = range(data, 0, pkiLen);
        byte[] ct = range(data, pkiLen, data.length - h);
        byte[] mac = range(data, data.length - h, data.length);
        byte[] senderDigest = c.pkiDecrypt(pki);
        if (senderDigest == null) return "err PKI block";
        for (Map.Entry<String, PublicKey[]> e : keys.entrySet()) {
            if (!Arrays.equals(Cryptography.sha512(e.getValue()[0].getEncoded()), senderDigest)) continue;
            byte[] stream = chatStreams.get(e.getKey());
            if (stream == null) return "err no chat stream for the sender";
            if (!Cryptography.memcmp(mac, Cryptography.hmac(Miscellaneous.joinByteArrays(pki, ct),
                    range(stream, Cryptography.CIPHER_KEY_LENGTH, stream.length))))
                return "err inner MAC";
            byte[] plain = Cryptography.decrypt(ct, range(stream, 0, Cryptography.CIPHER_KEY_LENGTH));
            if (plain == null || plain[0] != Messages.CHAT_MESSAGE_TYPE[0]) return "err not a chat message";
            String body = new String(range(plain, 1, plain.length), StandardCharsets.UTF_8);
            int cut = body.lastIndexOf('\n');
            String[] f = body.split("\\n");
            if (f.length != 6) return "err " + f.length + " fields";
            byte[] signed = Miscellaneous.joinByteArrays(senderDigest, Messages.CHAT_MESSAGE_TYPE,
                body.substring(0, cut + 1).getBytes(), Cryptography.sha512(c.chatEncryptionPublicKey().getEncoded()));
            if (!Cryptography.verifySignature(e.getValue()[1], D64.decode(f[5]), signed))
                return "err message signature";
            return "ok " + f[1] + " " + b64(Cryptography.sha512(data)) + " " + e.getKey();
        }
        return "err unknown sender";
    }
}
