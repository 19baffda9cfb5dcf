// Stand-in for android.content.res.AssetFileDescriptor (echomesh test harness): a plain file.
package android.content.res;

import java.io.FileInputStream;
import java.io.IOException;

public final class AssetFileDescriptor {
    private final String path;
    private FileInputStream stream;

    public AssetFileDescriptor(String path) { this.path = path; }

    public FileInputStream createInputStream() throws IOException {
        stream = new FileInputStream(path);
        return stream;
    }

    public void close() throws IOException {
        if (stream != null) stream.close();
    }
}
