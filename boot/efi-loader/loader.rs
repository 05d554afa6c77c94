//! beskar7-loader: a minimal UEFI application that starts a Linux EFI-stub kernel from the volume it
//! was itself loaded from, with the command line and initrds named in `\EFI\beskar7\boot.conf` on
//! that volume.
//!
//! The provider puts it, as `\EFI\BOOT\BOOTX64.EFI`, on the FAT EFI system partition it adds to ISOs
//! that only boot in BIOS mode (Flatcar), next to the ISO's own kernel and initrd. Built by
//! `boot/build.rs` with plain rustc for `x86_64-unknown-uefi` and embedded in the provider.
//!
//! `boot.conf` uses keys of the Boot Loader Specification (Type #1 entries):
//!
//! ```text
//! # comment
//! linux   /flatcar/vmlinuz         (exactly one; absolute path on this volume, `/` or `\`)
//! initrd  /flatcar/cpio.gz         (zero or more)
//! options console=ttyS0 ...        (zero or more, joined with single spaces)
//! ```
//!
//! The kernel gets `<options> initrd=\<path>...`: the x86 EFI stub loads each `initrd=` file from
//! the volume of its own image, which is this volume because the kernel is loaded by a device path
//! below this volume's device.
//!
//! On any failure the loader prints one line, waits 5 s so a person at the console can read it and
//! returns the error, so that the firmware goes on to its next boot option. The options are never
//! printed: they carry a config URL with a secret token.
//!
//! No crates: the few UEFI definitions below are our own. Their layouts (field order, argument
//! order and types) were checked against the UEFI 2.10 specification (sections 4.3, 4.4, 7, 9.1,
//! 10.2, 12.4, 13.4, 13.5) and the r-efi crate (src/system.rs, src/base.rs, src/protocols/).
//! Only what this loader calls is typed; the other function pointers are kept as `usize`
//! placeholders so that every field sits at its specified offset.

#![no_std]
#![no_main]

use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

type Handle = *mut c_void;
type Status = usize;
/// A function pointer this loader does not call.
type Unused = usize;

const ERROR_BIT: Status = 1 << (usize::BITS - 1);
const LOAD_ERROR: Status = ERROR_BIT | 1;
const BAD_BUFFER_SIZE: Status = ERROR_BIT | 4;
const OUT_OF_RESOURCES: Status = ERROR_BIT | 9;
const ABORTED: Status = ERROR_BIT | 21;

const LOADER_DATA: u32 = 2;
const FILE_MODE_READ: u64 = 1;

#[repr(C)]
struct Guid(u32, u16, u16, [u8; 8]);

const LOADED_IMAGE_GUID: Guid = Guid(
    0x5b1b_31a1,
    0x9562,
    0x11d2,
    [0x8e, 0x3f, 0x00, 0xa0, 0xc9, 0x69, 0x72, 0x3b],
);
const SIMPLE_FILE_SYSTEM_GUID: Guid = Guid(
    0x964e_5b22,
    0x6459,
    0x11d2,
    [0x8e, 0x39, 0x00, 0xa0, 0xc9, 0x69, 0x72, 0x3b],
);
const DEVICE_PATH_GUID: Guid = Guid(
    0x0957_6e91,
    0x6d3f,
    0x11d2,
    [0x8e, 0x39, 0x00, 0xa0, 0xc9, 0x69, 0x72, 0x3b],
);

#[repr(C)]
struct TableHeader {
    signature: u64,
    revision: u32,
    header_size: u32,
    crc32: u32,
    reserved: u32,
}

#[repr(C)]
struct SystemTable {
    hdr: TableHeader,
    firmware_vendor: *const u16,
    firmware_revision: u32,
    console_in_handle: Handle,
    con_in: *mut c_void,
    console_out_handle: Handle,
    con_out: *mut TextOutput,
    standard_error_handle: Handle,
    std_err: *mut TextOutput,
    runtime_services: *mut c_void,
    boot_services: *mut BootServices,
    number_of_table_entries: usize,
    configuration_table: *mut c_void,
}

#[repr(C)]
struct BootServices {
    hdr: TableHeader,
    // Task priority
    raise_tpl: Unused,
    restore_tpl: Unused,
    // Memory
    allocate_pages: Unused,
    free_pages: Unused,
    get_memory_map: Unused,
    allocate_pool: unsafe extern "efiapi" fn(u32, usize, *mut *mut c_void) -> Status,
    free_pool: unsafe extern "efiapi" fn(*mut c_void) -> Status,
    // Events and timers
    create_event: Unused,
    set_timer: Unused,
    wait_for_event: Unused,
    signal_event: Unused,
    close_event: Unused,
    check_event: Unused,
    // Protocol handlers
    install_protocol_interface: Unused,
    reinstall_protocol_interface: Unused,
    uninstall_protocol_interface: Unused,
    handle_protocol: unsafe extern "efiapi" fn(Handle, *const Guid, *mut *mut c_void) -> Status,
    reserved: *mut c_void,
    register_protocol_notify: Unused,
    locate_handle: Unused,
    locate_device_path: Unused,
    install_configuration_table: Unused,
    // Images
    load_image: unsafe extern "efiapi" fn(
        u8, // BOOLEAN BootPolicy
        Handle,
        *const u8, // EFI_DEVICE_PATH_PROTOCOL *
        *const c_void,
        usize,
        *mut Handle,
    ) -> Status,
    start_image: unsafe extern "efiapi" fn(Handle, *mut usize, *mut *mut u16) -> Status,
    exit: unsafe extern "efiapi" fn(Handle, Status, usize, *mut u16) -> Status,
    unload_image: unsafe extern "efiapi" fn(Handle) -> Status,
    exit_boot_services: Unused,
    // Miscellaneous
    get_next_monotonic_count: Unused,
    stall: unsafe extern "efiapi" fn(usize) -> Status,
    set_watchdog_timer: Unused,
    // Driver support (1.1+)
    connect_controller: Unused,
    disconnect_controller: Unused,
    // Open and close protocol (1.1+)
    open_protocol: Unused,
    close_protocol: Unused,
    open_protocol_information: Unused,
    // Library (1.1+)
    protocols_per_handle: Unused,
    locate_handle_buffer: Unused,
    locate_protocol: Unused,
    install_multiple_protocol_interfaces: Unused,
    uninstall_multiple_protocol_interfaces: Unused,
    // CRC (1.1+)
    calculate_crc32: Unused,
    // Memory utility (1.1+)
    copy_mem: Unused,
    set_mem: Unused,
    // 2.0+
    create_event_ex: Unused,
}

#[repr(C)]
struct TextOutput {
    reset: Unused,
    output_string: unsafe extern "efiapi" fn(*mut TextOutput, *const u16) -> Status,
    test_string: Unused,
    query_mode: Unused,
    set_mode: Unused,
    set_attribute: Unused,
    clear_screen: Unused,
    set_cursor_position: Unused,
    enable_cursor: Unused,
    mode: *mut c_void,
}

#[repr(C)]
struct LoadedImage {
    revision: u32,
    parent_handle: Handle,
    system_table: *mut SystemTable,
    device_handle: Handle,
    file_path: *mut c_void,
    reserved: *mut c_void,
    load_options_size: u32,
    load_options: *mut c_void,
    image_base: *mut c_void,
    image_size: u64,
    image_code_type: u32,
    image_data_type: u32,
    unload: Unused,
}

#[repr(C)]
struct SimpleFileSystem {
    revision: u64,
    open_volume: unsafe extern "efiapi" fn(*mut SimpleFileSystem, *mut *mut File) -> Status,
}

/// EFI_FILE_PROTOCOL up to `read`, the last member used; never constructed here, only read
/// through the firmware's pointer, so the members after it need not be declared.
#[repr(C)]
struct File {
    revision: u64,
    open: unsafe extern "efiapi" fn(*mut File, *mut *mut File, *const u16, u64, u64) -> Status,
    close: unsafe extern "efiapi" fn(*mut File) -> Status,
    delete: Unused,
    read: unsafe extern "efiapi" fn(*mut File, *mut usize, *mut c_void) -> Status,
}

/// Device path node types and subtypes (UEFI 10.3).
const DEVICE_PATH_MEDIA: u8 = 0x04;
const DEVICE_PATH_MEDIA_FILE_PATH: u8 = 0x04;
const DEVICE_PATH_END: u8 = 0x7f;
const DEVICE_PATH_END_ENTIRE: u8 = 0xff;
/// Longer device paths are taken for corrupt ones rather than walked further.
const DEVICE_PATH_MAX: usize = 4096;

const CONFIG_MAX: usize = 64 * 1024;
const CONFIG_PATH: [u16; 23] = ucs2(r"\EFI\beskar7\boot.conf");
/// Longest `linux` path, in UCS-2 units with the NUL; keeps the file-path node's u16 length valid.
const PATH_MAX: usize = 1024;
const STALL_ON_ERROR_US: usize = 5_000_000;

/// The running image and the system table, for the panic handler. Panics are not expected (the
/// crate's unit tests check the binary holds no panic locations), but if one happens the loader
/// must still leave through Exit so that the firmware tries the next boot option.
static IMAGE: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
static SYSTEM_TABLE: AtomicPtr<SystemTable> = AtomicPtr::new(ptr::null_mut());

#[unsafe(no_mangle)]
extern "efiapi" fn efi_main(image: Handle, st: *mut SystemTable) -> Status {
    IMAGE.store(image, Ordering::Relaxed);
    SYSTEM_TABLE.store(st, Ordering::Relaxed);
    // SAFETY: the firmware passes a valid system table, usable until ExitBootServices, which only
    // the kernel calls.
    let fw = unsafe { Firmware::new(st) };
    boot(&fw, image)
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    let st = SYSTEM_TABLE.load(Ordering::Relaxed);
    if !st.is_null() {
        // SAFETY: as in efi_main.
        let fw = unsafe { Firmware::new(st) };
        let status = fw.fail("internal error", &[], ABORTED);
        // SAFETY: Exit of the running image with no exit data; it does not return.
        unsafe { (fw.bs.exit)(IMAGE.load(Ordering::Relaxed), status, 0, ptr::null_mut()) };
    }
    // Only reached if the firmware broke its contract; there is nothing left to return to.
    loop {
        core::hint::spin_loop();
    }
}

fn boot(fw: &Firmware, image: Handle) -> Status {
    let (_nul, config_name) = CONFIG_PATH.split_last().unwrap_or((&0, &[]));

    let loaded: *mut LoadedImage = match fw.handle_protocol(image, &LOADED_IMAGE_GUID) {
        Ok(p) => p.cast(),
        Err(s) => return fw.fail("no loaded-image protocol for the loader", &[], s),
    };
    // SAFETY: the firmware's LoadedImage of this image, valid while it runs.
    let device = unsafe { (*loaded).device_handle };

    let mut config = match fw.allocate::<u8>(CONFIG_MAX + 1) {
        Ok(b) => b,
        Err(s) => return fw.fail("out of memory", &[], s),
    };
    let config_len = match read_config(fw, device, config.as_mut_slice()) {
        Ok(n) if n > CONFIG_MAX => {
            return fw.fail("larger than 64 KiB: ", config_name, BAD_BUFFER_SIZE);
        }
        Ok(n) => n,
        Err(s) => return fw.fail("cannot read ", config_name, s),
    };
    let text = match config.as_mut_slice().get(..config_len) {
        Some(bytes) => bytes,
        None => return fw.fail("internal error", &[], ABORTED),
    };
    let text = match core::str::from_utf8(text) {
        Ok(t) => t.strip_prefix('\u{feff}').unwrap_or(t),
        Err(_) => return fw.fail("not UTF-8: ", config_name, LOAD_ERROR),
    };

    let mut linux = None;
    for (key, value) in entries(text) {
        if key == "linux" {
            if linux.is_some() {
                return fw.fail("more than one linux line in ", config_name, LOAD_ERROR);
            }
            linux = Some(value);
        }
    }
    let Some(linux) = linux else {
        return fw.fail("no linux line in ", config_name, LOAD_ERROR);
    };
    let mut kernel = match fw.allocate::<u16>(PATH_MAX) {
        Ok(b) => b,
        Err(s) => return fw.fail("out of memory", &[], s),
    };
    let kernel_len = {
        let mut w = Ucs2Writer::new(kernel.as_mut_slice());
        if push_path(&mut w, linux).is_err() || w.push(0).is_err() {
            return fw.fail("bad linux path in ", config_name, LOAD_ERROR);
        }
        w.len
    };
    let kernel_path: &[u16] = match kernel.as_mut_slice().get(..kernel_len) {
        Some(p) => p,
        None => return fw.fail("internal error", &[], ABORTED),
    };
    let Some((_nul, kernel_name)) = kernel_path.split_last() else {
        return fw.fail("internal error", &[], ABORTED);
    };

    // Each input byte gives at most one UCS-2 unit and ` initrd=` is at most one unit longer than
    // the `initrd ` it replaces, so the config's length plus a little bounds the command line (and
    // the writer refuses rather than overflows if that were wrong).
    let mut cmdline = match fw.allocate::<u16>(config_len + 16) {
        Ok(b) => b,
        Err(s) => return fw.fail("out of memory", &[], s),
    };
    let cmdline_len = match build_cmdline(text, cmdline.as_mut_slice()) {
        Ok(n) => n,
        Err(()) => return fw.fail("bad initrd or options line in ", config_name, LOAD_ERROR),
    };

    let device_path = match fw.handle_protocol(device, &DEVICE_PATH_GUID) {
        Ok(p) => p.cast::<u8>().cast_const(),
        Err(s) => return fw.fail("no device path for the boot volume", &[], s),
    };
    let kernel_device_path = match file_device_path(fw, device_path, kernel_path) {
        Ok(p) => p,
        Err(s) => return fw.fail("bad device path of the boot volume", &[], s),
    };

    let mut child: Handle = ptr::null_mut();
    // SAFETY: a valid, end-terminated device path; BootPolicy FALSE, no source buffer.
    let status = unsafe {
        (fw.bs.load_image)(
            0,
            image,
            kernel_device_path.ptr.cast_const().cast(),
            ptr::null(),
            0,
            &mut child,
        )
    };
    if status & ERROR_BIT != 0 {
        return fw.fail("cannot load ", kernel_name, status);
    }
    let child_loaded: *mut LoadedImage = match fw.handle_protocol(child, &LOADED_IMAGE_GUID) {
        Ok(p) => p.cast(),
        Err(s) => {
            // SAFETY: the image loaded above and not started.
            unsafe { (fw.bs.unload_image)(child) };
            return fw.fail("no loaded-image protocol for ", kernel_name, s);
        }
    };
    // SAFETY: the child's LoadedImage; the command line outlives the child (it is freed only after
    // StartImage returns, when the kernel's stub has given up).
    unsafe {
        (*child_loaded).load_options = cmdline.ptr.cast();
        (*child_loaded).load_options_size = (cmdline_len * 2) as u32;
    }

    fw.say("starting ", kernel_name, None);
    // SAFETY: a loaded, not yet started image; no exit data requested.
    let status = unsafe { (fw.bs.start_image)(child, ptr::null_mut(), ptr::null_mut()) };
    let status = if status & ERROR_BIT != 0 {
        status
    } else {
        LOAD_ERROR
    };
    fw.fail("kernel returned: ", kernel_name, status)
}

/// Reads `\EFI\beskar7\boot.conf` of the simple file system on `device` into `buf`; returns the
/// number of bytes read, which is `buf.len()` when the file is at least that long.
fn read_config(fw: &Firmware, device: Handle, buf: &mut [u8]) -> Result<usize, Status> {
    let fs: *mut SimpleFileSystem = fw.handle_protocol(device, &SIMPLE_FILE_SYSTEM_GUID)?.cast();
    let mut root = ptr::null_mut();
    // SAFETY: the volume's protocol instance, from the firmware.
    check(unsafe { ((*fs).open_volume)(fs, &mut root) })?;
    let root = FileHandle(root);
    let mut file = ptr::null_mut();
    // SAFETY: an open directory and a NUL-terminated name.
    check(unsafe { ((*root.0).open)(root.0, &mut file, CONFIG_PATH.as_ptr(), FILE_MODE_READ, 0) })?;
    let file = FileHandle(file);
    let mut total = 0;
    while let Some(rest) = buf.get_mut(total..) {
        if rest.is_empty() {
            break;
        }
        let mut n = rest.len();
        // SAFETY: an open file and a buffer of n bytes.
        check(unsafe { ((*file.0).read)(file.0, &mut n, rest.as_mut_ptr().cast()) })?;
        if n == 0 {
            break;
        }
        total += n.min(rest.len());
    }
    Ok(total)
}

/// The (key, value) of each line that is neither blank nor a `#` comment. Keys and values are
/// separated by spaces or tabs; surrounding blanks and a CR of CRLF are dropped.
fn entries(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = text;
    core::iter::from_fn(move || {
        while !rest.is_empty() {
            // Byte-wise rather than str::lines(): core's char-pattern searcher brings in a panic
            // path, and a `\n` byte always ends a UTF-8 character.
            let (line, next) = match rest.bytes().position(|b| b == b'\n') {
                Some(i) => (rest.get(..i)?, rest.get(i + 1..)?),
                None => (rest, ""),
            };
            rest = next;
            let line = line.trim_ascii();
            if line.is_empty() || line.as_bytes().first() == Some(&b'#') {
                continue;
            }
            let key_len = line
                .bytes()
                .position(|b| b == b' ' || b == b'\t')
                .unwrap_or(line.len());
            let (key, value) = line.split_at_checked(key_len)?;
            return Some((key, value.trim_ascii_start()));
        }
        None
    })
}

/// Writes the kernel command line, NUL-terminated: the `options` values joined with single spaces,
/// then ` initrd=\PATH` for each `initrd` line. Returns its length in units, with the NUL.
fn build_cmdline(text: &str, out: &mut [u16]) -> Result<usize, ()> {
    let mut w = Ucs2Writer::new(out);
    for (key, value) in entries(text) {
        if key == "options" && !value.is_empty() {
            if w.len > 0 {
                w.push(u16::from(b' '))?;
            }
            w.push_str(value)?;
        }
    }
    for (key, value) in entries(text) {
        if key == "initrd" {
            if w.len > 0 {
                w.push(u16::from(b' '))?;
            }
            w.push_str("initrd=")?;
            push_path(&mut w, value)?;
        }
    }
    w.push(0)?;
    Ok(w.len)
}

/// Writes an absolute path of this volume with `\` separators. Refuses relative paths and paths
/// with blanks, control characters or `"`, which the kernel's command-line parser would split.
fn push_path(w: &mut Ucs2Writer, path: &str) -> Result<(), ()> {
    if !matches!(path.as_bytes(), [b'/' | b'\\', _, ..]) {
        return Err(());
    }
    for c in path.chars() {
        match c {
            '/' | '\\' => w.push(u16::from(b'\\'))?,
            c if c <= ' ' || c == '"' || c == '\u{7f}' => return Err(()),
            c => w.push_char(c)?,
        }
    }
    Ok(())
}

/// `device` (up to its end node) + a media file-path node holding `path` (NUL-terminated) + an
/// end node, in pool memory.
fn file_device_path<'a>(
    fw: &'a Firmware,
    device: *const u8,
    path: &[u16],
) -> Result<Pool<'a, u8>, Status> {
    let mut prefix = 0usize;
    loop {
        // SAFETY: the firmware's device path is a sequence of nodes ending with an end node; each
        // node's 4-byte header is read only while inside the bound.
        let (kind, len) = unsafe {
            let node = device.add(prefix);
            (
                *node,
                usize::from(u16::from_le_bytes([*node.add(2), *node.add(3)])),
            )
        };
        if kind == DEVICE_PATH_END {
            break;
        }
        if len < 4 || prefix + len > DEVICE_PATH_MAX {
            return Err(LOAD_ERROR);
        }
        prefix += len;
    }
    let node_len = 4 + 2 * path.len();
    let node_len_le = u16::try_from(node_len)
        .map_err(|_| BAD_BUFFER_SIZE)?
        .to_le_bytes();
    let mut out = fw.allocate::<u8>(prefix + node_len + 4)?;
    let bytes = out.as_mut_slice();
    let (head, tail) = bytes.split_at_mut(prefix);
    // SAFETY: `prefix` bytes of the firmware's path were walked above.
    head.copy_from_slice(unsafe { core::slice::from_raw_parts(device, prefix) });
    let (node, end) = tail.split_at_mut(node_len);
    let (header, name) = node.split_at_mut(4);
    header.copy_from_slice(&[
        DEVICE_PATH_MEDIA,
        DEVICE_PATH_MEDIA_FILE_PATH,
        node_len_le[0],
        node_len_le[1],
    ]);
    for (dst, unit) in name.chunks_exact_mut(2).zip(path) {
        dst.copy_from_slice(&unit.to_le_bytes());
    }
    end.copy_from_slice(&[DEVICE_PATH_END, DEVICE_PATH_END_ENTIRE, 4, 0]);
    Ok(out)
}

/// Boot services and the console, from the system table.
struct Firmware<'a> {
    bs: &'a BootServices,
    con_out: *mut TextOutput,
}

impl Firmware<'_> {
    /// # Safety
    /// `st` is the firmware's system table and boot services have not been exited.
    unsafe fn new(st: *mut SystemTable) -> Self {
        // SAFETY: per the contract of this function.
        unsafe {
            Self {
                bs: &*(*st).boot_services,
                con_out: (*st).con_out,
            }
        }
    }

    fn handle_protocol(&self, handle: Handle, guid: &Guid) -> Result<*mut c_void, Status> {
        let mut interface = ptr::null_mut();
        // SAFETY: HandleProtocol only writes the interface pointer.
        check(unsafe { (self.bs.handle_protocol)(handle, guid, &mut interface) })?;
        if interface.is_null() {
            return Err(LOAD_ERROR);
        }
        Ok(interface)
    }

    /// `len` zeroed elements of pool memory (LoaderData), freed on drop.
    fn allocate<T: Copy>(&self, len: usize) -> Result<Pool<'_, T>, Status> {
        let bytes = len
            .checked_mul(size_of::<T>())
            .ok_or(OUT_OF_RESOURCES)?
            .max(1);
        let mut p = ptr::null_mut();
        // SAFETY: AllocatePool only writes the pointer.
        check(unsafe { (self.bs.allocate_pool)(LOADER_DATA, bytes, &mut p) })?;
        if p.is_null() {
            return Err(OUT_OF_RESOURCES);
        }
        // SAFETY: `bytes` bytes were just allocated; pool memory is 8-byte aligned, enough for T.
        unsafe { ptr::write_bytes(p.cast::<u8>(), 0, bytes) };
        Ok(Pool {
            fw: self,
            ptr: p.cast(),
            len,
        })
    }

    /// Prints `beskar7-loader: <what><path>[: <status>]` on the console.
    fn say(&self, what: &str, path: &[u16], status: Option<Status>) {
        if self.con_out.is_null() {
            return;
        }
        const UNITS: usize = 192;
        let mut line = [0u16; UNITS];
        // Leave room for CR LF NUL; a longer message is cut, never refused.
        let (body, _) = line.split_at_mut(UNITS - 3);
        let mut w = Ucs2Writer::new(body);
        let _ = w.push_str("beskar7-loader: ");
        let _ = w.push_str(what);
        for &unit in path {
            let _ = w.push(unit);
        }
        if let Some(status) = status {
            let _ = w.push_str(": 0x");
            let digits = (usize::BITS - status.leading_zeros()).div_ceil(4).max(1);
            for i in (0..digits).rev() {
                let nibble = (status >> (i * 4)) & 0xf;
                let _ = w.push(u16::from(b"0123456789ABCDEF"[nibble]));
            }
        }
        let end = w.len;
        for (i, unit) in [u16::from(b'\r'), u16::from(b'\n')].into_iter().enumerate() {
            if let Some(slot) = line.get_mut(end + i) {
                *slot = unit;
            }
        }
        // SAFETY: a NUL-terminated string (the array's last unit is never written).
        unsafe { ((*self.con_out).output_string)(self.con_out, line.as_ptr()) };
    }

    /// Prints the failure, waits so that it can be read, and returns `status` for efi_main.
    fn fail(&self, what: &str, path: &[u16], status: Status) -> Status {
        self.say(what, path, Some(status));
        // SAFETY: Stall has no memory effects.
        unsafe { (self.bs.stall)(STALL_ON_ERROR_US) };
        status
    }
}

/// Pool memory returned to the firmware on drop.
struct Pool<'a, T: Copy> {
    fw: &'a Firmware<'a>,
    ptr: *mut T,
    len: usize,
}

impl<T: Copy> Pool<'_, T> {
    fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: `len` initialised elements, owned by self.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<T: Copy> Drop for Pool<'_, T> {
    fn drop(&mut self) {
        // SAFETY: allocated by AllocatePool and not freed before.
        unsafe { (self.fw.bs.free_pool)(self.ptr.cast()) };
    }
}

/// An open EFI_FILE_PROTOCOL, closed on drop.
struct FileHandle(*mut File);

impl Drop for FileHandle {
    fn drop(&mut self) {
        // SAFETY: opened by Open/OpenVolume and not closed before.
        unsafe { ((*self.0).close)(self.0) };
    }
}

/// Appends UCS-2 to a fixed buffer; refuses (rather than panics) when it is full.
struct Ucs2Writer<'a> {
    buf: &'a mut [u16],
    len: usize,
}

impl<'a> Ucs2Writer<'a> {
    fn new(buf: &'a mut [u16]) -> Self {
        Self { buf, len: 0 }
    }

    fn push(&mut self, unit: u16) -> Result<(), ()> {
        *self.buf.get_mut(self.len).ok_or(())? = unit;
        self.len += 1;
        Ok(())
    }

    /// UCS-2 has no characters beyond U+FFFF: those are refused.
    fn push_char(&mut self, c: char) -> Result<(), ()> {
        self.push(u16::try_from(u32::from(c)).map_err(|_| ())?)
    }

    fn push_str(&mut self, s: &str) -> Result<(), ()> {
        s.chars().try_for_each(|c| self.push_char(c))
    }
}

fn check(status: Status) -> Result<(), Status> {
    if status & ERROR_BIT != 0 {
        Err(status)
    } else {
        Ok(())
    }
}

/// An ASCII string as a NUL-terminated UCS-2 array, at compile time.
const fn ucs2<const N: usize>(s: &str) -> [u16; N] {
    let bytes = s.as_bytes();
    assert!(bytes.len() + 1 == N, "N must be the length plus the NUL");
    let mut out = [0u16; N];
    let mut i = 0;
    while i < bytes.len() {
        assert!(bytes[i].is_ascii());
        out[i] = bytes[i] as u16;
        i += 1;
    }
    out
}
