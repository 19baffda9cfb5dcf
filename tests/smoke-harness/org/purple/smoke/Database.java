// Stand-in for Smoke's Database (echomesh test harness): the three participant look-ups that
// Messages makes, answered from memory.
package org.purple.smoke;

import java.security.PublicKey;
import java.util.HashMap;
import java.util.Map;

public final class Database {
    private static final Database INSTANCE = new Database();
    private final Map<String, PublicKey> encryptionKeys = new HashMap<>();
    private final Map<String, String> options = new HashMap<>();

    public static Database getInstance() { return INSTANCE; }

    public synchronized void addParticipant(String sipHashId, PublicKey encryptionKey, String opts) {
        encryptionKeys.put(sipHashId, encryptionKey);
        options.put(sipHashId, opts);
    }

    public synchronized PublicKey publicEncryptionKeyForSipHashId(Cryptography c, String sipHashId) {
        return encryptionKeys.get(sipHashId);
    }

    public synchronized String publicKeyEncryptionAlgorithm(Cryptography c, String sipHashId) {
        PublicKey k = encryptionKeys.get(sipHashId);
        return k == null ? "" : k.getAlgorithm();
    }

    public synchronized String readParticipantOptions(Cryptography c, String sipHashId) {
        String o = options.get(sipHashId);
        return o == null ? "" : o;
    }
}
