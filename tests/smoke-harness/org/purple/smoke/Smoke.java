// Stand-in for Smoke's Application class (echomesh test harness): only the content resolver
// that Cryptography.sha256FileDigest opens files with.
package org.purple.smoke;

import android.content.res.AssetFileDescriptor;
import android.net.Uri;

public final class Smoke {
    private static final Smoke APP = new Smoke();

    public static Smoke getApplication() { return APP; }

    public Smoke getContentResolver() { return this; }

    public AssetFileDescriptor openAssetFileDescriptor(Uri uri, String mode) {
        return new AssetFileDescriptor(uri.path);
    }
}
