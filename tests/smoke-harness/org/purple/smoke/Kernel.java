// Stand-in for Smoke's Kernel (echomesh test harness): only the retrieval identity, a random
// 64-byte value kept for the process (the harness may replace it).
package org.purple.smoke;

public final class Kernel {
    private static final Kernel INSTANCE = new Kernel();
    private byte[] retrievalIdentity;

    public static Kernel getInstance() { return INSTANCE; }

    public synchronized byte[] messageRetrievalIdentity() {
        if (retrievalIdentity == null) retrievalIdentity = Cryptography.randomBytes(64);
        return retrievalIdentity;
    }

    public synchronized void setMessageRetrievalIdentity(byte[] identity) {
        retrievalIdentity = identity;
    }
}
