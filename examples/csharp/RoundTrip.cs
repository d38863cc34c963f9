// vhdkit from C# through P/Invoke: back up a disk and then its changes from
// a Hyper-V change list, with progress reported into managed code, restore
// as VHDX through a write callback into a .NET Stream, verify, and read the
// backup through a reader. Built by tests/capi_languages.rs with Debian's
// mono-mcs and run with mono-runtime; the restored image is compared with
// qemu-img's raw view of CHANGED.
//
// usage: mono RoundTrip.exe BASE.vhdx CHANGED.vhdx CHANGES.json STORE OUT.vhdx
using System;
using System.IO;
using System.Runtime.InteropServices;
using System.Text;
using System.Threading;

static class Native
{
    const string Lib = "vhdkit";

    [StructLayout(LayoutKind.Sequential)]
    public struct Progress
    {
        public int Operation;
        public uint Item, Items;
        public ulong BytesDone, BytesTotal;
    }

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    public delegate void ProgressFn(IntPtr user, ref Progress progress);

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    public delegate int WriteFn(IntPtr user, ulong offset, IntPtr data, UIntPtr len);

    [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
    public static extern uint vhdkit_abi_version();

    [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
    public static extern int vhdkit_disk_open([MarshalAs(UnmanagedType.LPUTF8Str)] string path,
        [MarshalAs(UnmanagedType.LPUTF8Str)] string options, out IntPtr disk, out IntPtr err);

    [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
    public static extern void vhdkit_disk_free(IntPtr disk);

    [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
    public static extern int vhdkit_disk_read_at(IntPtr disk, ulong offset, byte[] buf, UIntPtr len, out IntPtr err);

    [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
    public static extern int vhdkit_store_init([MarshalAs(UnmanagedType.LPUTF8Str)] string location,
        [MarshalAs(UnmanagedType.LPUTF8Str)] string options, out IntPtr store, out IntPtr err);

    [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
    public static extern void vhdkit_store_free(IntPtr store);

    [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
    public static extern int vhdkit_store_backup(IntPtr store, IntPtr[] disks, UIntPtr count,
        [MarshalAs(UnmanagedType.LPUTF8Str)] string options, IntPtr cancel, ProgressFn progress, IntPtr user,
        out IntPtr report, out IntPtr err);

    [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
    public static extern int vhdkit_store_restore_to_callback(IntPtr store,
        [MarshalAs(UnmanagedType.LPUTF8Str)] string spec, [MarshalAs(UnmanagedType.LPUTF8Str)] string format,
        WriteFn write, IntPtr writeUser, [MarshalAs(UnmanagedType.LPUTF8Str)] string options, IntPtr cancel,
        ProgressFn progress, IntPtr user, out IntPtr report, out IntPtr err);

    [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
    public static extern int vhdkit_store_verify(IntPtr store, [MarshalAs(UnmanagedType.LPUTF8Str)] string options,
        IntPtr cancel, ProgressFn progress, IntPtr user, out IntPtr report, out IntPtr err);

    [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
    public static extern int vhdkit_reader_open(IntPtr store, [MarshalAs(UnmanagedType.LPUTF8Str)] string spec,
        [MarshalAs(UnmanagedType.LPUTF8Str)] string disk, out IntPtr reader, out IntPtr err);

    [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
    public static extern int vhdkit_reader_read_at(IntPtr reader, ulong offset, byte[] buf, UIntPtr len,
        out IntPtr err);

    [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
    public static extern void vhdkit_reader_free(IntPtr reader);

    [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
    public static extern IntPtr vhdkit_error_message(IntPtr err);

    [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
    public static extern int vhdkit_error_status(IntPtr err);

    [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
    public static extern void vhdkit_error_free(IntPtr err);

    [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
    public static extern void vhdkit_string_free(IntPtr s);

    /// A UTF-8 C string as a .NET string (without freeing it).
    public static string Utf8(IntPtr p)
    {
        if (p == IntPtr.Zero) return null;
        int n = 0;
        while (Marshal.ReadByte(p, n) != 0) n++;
        var bytes = new byte[n];
        Marshal.Copy(p, bytes, 0, n);
        return Encoding.UTF8.GetString(bytes);
    }

    /// A JSON report vhdkit returned, freed once read.
    public static string Take(IntPtr p)
    {
        string s = Utf8(p);
        vhdkit_string_free(p);
        return s;
    }
}

/// A vhdkit failure as a .NET exception: its status and message.
class VhdkitException : Exception
{
    public readonly int Status;
    public VhdkitException(int status, string message) : base(message) { Status = status; }

    public static void Check(int status, IntPtr err)
    {
        if (status == 0) return;
        string message = Native.Utf8(Native.vhdkit_error_message(err));
        Native.vhdkit_error_free(err);
        throw new VhdkitException(status, message);
    }
}

static class RoundTrip
{
    static int progressCalls;
    static int progressThreads;
    static readonly int mainThread = Thread.CurrentThread.ManagedThreadId;

    static void OnProgress(IntPtr user, ref Native.Progress p)
    {
        Interlocked.Increment(ref progressCalls);
        if (Thread.CurrentThread.ManagedThreadId != mainThread) Interlocked.Increment(ref progressThreads);
    }

    static int Main(string[] args)
    {
        if (args.Length != 5)
        {
            Console.Error.WriteLine("usage: RoundTrip BASE.vhdx CHANGED.vhdx CHANGES.json STORE OUT.vhdx");
            return 2;
        }
        if (Native.vhdkit_abi_version() >> 16 != 1) throw new Exception("unexpected vhdkit ABI");
        IntPtr err, report;
        Native.ProgressFn progress = OnProgress;

        IntPtr baseDisk, changed, store;
        VhdkitException.Check(Native.vhdkit_disk_open(args[0], null, out baseDisk, out err), err);
        VhdkitException.Check(Native.vhdkit_store_init(args[3], "{\"compression\": \"zstd\"}", out store, out err), err);
        VhdkitException.Check(Native.vhdkit_store_backup(store, new[] { baseDisk }, (UIntPtr)1, "{\"name\": \"vm\"}",
            IntPtr.Zero, progress, IntPtr.Zero, out report, out err), err);
        Console.WriteLine("full " + Native.Take(report));
        Console.WriteLine("progress calls into managed code: " + progressCalls + " (" + progressThreads +
                          " from vhdkit's threads)");
        if (progressCalls == 0) throw new Exception("no progress reported");

        string changes = File.ReadAllText(args[2]);
        VhdkitException.Check(Native.vhdkit_disk_open(args[1], null, out changed, out err), err);
        string options = "{\"name\": \"vm\", \"disks\": [{\"changes\": " + changes + "}]}";
        VhdkitException.Check(Native.vhdkit_store_backup(store, new[] { changed }, (UIntPtr)1, options,
            IntPtr.Zero, progress, IntPtr.Zero, out report, out err), err);
        string incremental = Native.Take(report);
        Console.WriteLine("incremental " + incremental);
        if (!incremental.Contains("\"kind\":\"incremental\"")) throw new Exception("not an incremental");

        // Restore as VHDX into a .NET Stream, through the write callback.
        long written = 0;
        using (var stream = new FileStream(args[4], FileMode.Create, FileAccess.Write))
        {
            var buffer = new byte[0];
            Native.WriteFn write = (user, offset, data, len) =>
            {
                int n = checked((int)len.ToUInt64());
                if (buffer.Length < n) buffer = new byte[n];
                Marshal.Copy(data, buffer, 0, n);
                stream.Seek((long)offset, SeekOrigin.Begin);
                stream.Write(buffer, 0, n);
                written += n;
                return 0;
            };
            VhdkitException.Check(Native.vhdkit_store_restore_to_callback(store, "vm", "vhdx", write, IntPtr.Zero,
                null, IntPtr.Zero, progress, IntPtr.Zero, out report, out err), err);
            GC.KeepAlive(write);
            Console.WriteLine("restore " + Native.Take(report) + "; " + written + " bytes through the stream");
        }

        VhdkitException.Check(Native.vhdkit_store_verify(store, null, IntPtr.Zero, null, IntPtr.Zero, out report,
            out err), err);
        Console.WriteLine("verify " + Native.Take(report));

        // The reader and the disk agree.
        IntPtr reader;
        VhdkitException.Check(Native.vhdkit_reader_open(store, "vm", null, out reader, out err), err);
        var a = new byte[65536];
        var b = new byte[65536];
        foreach (ulong offset in new ulong[] { 0, 1048576 - 100, 41943040 })
        {
            VhdkitException.Check(Native.vhdkit_reader_read_at(reader, offset, a, (UIntPtr)a.Length, out err), err);
            VhdkitException.Check(Native.vhdkit_disk_read_at(changed, offset, b, (UIntPtr)b.Length, out err), err);
            for (int i = 0; i < a.Length; i++)
                if (a[i] != b[i]) throw new Exception("reader differs at " + (offset + (ulong)i));
        }

        // A failure comes back as an exception with vhdkit's message.
        try
        {
            VhdkitException.Check(Native.vhdkit_reader_open(store, "no-such-backup", null, out reader, out err), err);
            throw new Exception("opened a backup that does not exist");
        }
        catch (VhdkitException e)
        {
            Console.WriteLine("expected failure " + e.Status + ": " + e.Message);
            if (e.Status != 1) throw;
        }

        Native.vhdkit_reader_free(reader);
        Native.vhdkit_disk_free(baseDisk);
        Native.vhdkit_disk_free(changed);
        Native.vhdkit_store_free(store);
        GC.KeepAlive(progress);
        Console.WriteLine("CSHARP ROUNDTRIP OK");
        return 0;
    }
}
