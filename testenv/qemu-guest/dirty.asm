; A QEMU test guest (the QEMU baseline's and qemu-stream's tests'): a 64 KiB
; firmware image passed to QEMU with `-bios`, so no SeaBIOS runs and guest
; RAM holds exactly the preloaded memory image. It switches to 32-bit
; protected mode (flat segments, no paging), programs the PIT for 1000
; interrupts per second and dirties pages of a working set at a set rate;
; with a rate of 0 it halts forever (an idle guest).
;
; Each dirtied page gets one 32-bit word overwritten at a pseudo-random
; offset, the page itself picked pseudo-randomly (an LCG) from the working
; set — as wanmig's test guest does with its memory workload (one word per
; page written, pages drawn at random from a working set at 8 MiB).
;
; The parameter block at offset 0xF000 (physical 0xFFFFF000) is written by
; the host (testenv/src/qemu/guest.rs) before QEMU starts. The Rust side
; carries these bytes verbatim (`CODE`); the test `guest_matches_nasm`
; assembles this file with `nasm -f bin` and compares when nasm is present.
;
; Assemble: nasm -f bin -o dirty.bin dirty.asm   (65536 bytes)

BASE     equ 0xFFFF0000
HZ       equ 1000            ; PIT interrupts per second
PIT_HZ   equ 1193182
STACK    equ 0x7000          ; a few bytes of stack in low RAM (interrupt frames)

        bits 16
        org BASE
        times 0xF000 - ($ - $$) db 0

; ---- parameters (host-patched) -------------------------------------------
params:
pages_per_sec:  dd 0         ; pages to dirty per second; 0 = idle guest
ws_base:        dd 0         ; physical address of the working set
ws_pages:       dd 0         ; pages in the working set (>= 1 when dirtying)
seed:           dd 0         ; LCG seed

        align 8
gdt:    dq 0
        dq 0x00CF9A000000FFFF   ; 0x08: flat 32-bit code
        dq 0x00CF92000000FFFF   ; 0x10: flat 32-bit data
gdt_desc:
        dw 3 * 8 - 1
        dd gdt
idt_desc:
        dw 48 * 8 - 1
        dd idt

; ---- 16-bit entry: from the reset vector ---------------------------------
start16:
        cli
        cld
        o32 lgdt [cs:gdt_desc - $$]
        mov eax, cr0
        or al, 1
        mov cr0, eax
        jmp dword 0x08:start32

        bits 32
start32:
        mov ax, 0x10
        mov ds, ax
        mov es, ax
        mov ss, ax
        mov esp, STACK
        lidt [idt_desc]
        mov ebx, [pages_per_sec]
        test ebx, ebx
        jz idle

        ; 8259 PICs: vectors 0x20..0x2F, only IRQ0 (the PIT) unmasked.
        mov al, 0x11
        out 0x20, al
        out 0xA0, al
        mov al, 0x20
        out 0x21, al
        mov al, 0x28
        out 0xA1, al
        mov al, 4
        out 0x21, al
        mov al, 2
        out 0xA1, al
        mov al, 1
        out 0x21, al
        out 0xA1, al
        mov al, 0xFE
        out 0x21, al
        mov al, 0xFF
        out 0xA1, al
        ; PIT channel 0, lobyte/hibyte, mode 2 (rate generator), HZ per second.
        mov al, 0x34
        out 0x43, al
        mov ax, (PIT_HZ + HZ / 2) / HZ
        out 0x40, al
        mov al, ah
        out 0x40, al

        ; Without a BIOS the local APIC has LINT0 masked, which would swallow
        ; the PIC's interrupts: enable it (spurious vector 0x2F) and set LINT0
        ; to ExtINT ("virtual wire"), as a BIOS does.
        mov dword [0xFEE000F0], 0x12F
        mov dword [0xFEE00350], 0x700

        xor esi, esi            ; credit, in pages x HZ
        mov ecx, [seed]         ; LCG state
tick:
        sti
        hlt                     ; woken by the PIT interrupt
        cli
        add esi, ebx
dirty:
        cmp esi, HZ
        jb tick
        sub esi, HZ
        imul ecx, ecx, 1664525
        add ecx, 1013904223
        mov eax, ecx
        mul dword [ws_pages]    ; edx = page index in [0, ws_pages)
        shl edx, 12
        add edx, [ws_base]
        mov eax, ecx
        shr eax, 8
        and eax, 0xFFC          ; word offset in the page
        mov [edx + eax], ecx
        jmp dirty

idle:
        hlt                     ; interrupts are off: sleeps for good
        jmp idle

; Every vector points here; only IRQ0 is ever raised: acknowledge and return.
irq:
        push eax
        mov al, 0x20
        out 0x20, al
        pop eax
        iret

; ---- IDT: 48 interrupt gates to `irq` ------------------------------------
        align 8
idt:
%rep 48
        dw (irq - $$ + BASE) & 0xFFFF
        dw 0x08
        dw 0x8E00
        dw (irq - $$ + BASE) >> 16
%endrep

; ---- reset vector (physical 0xFFFFFFF0) ----------------------------------
        times 0xFFF0 - ($ - $$) db 0
        bits 16
        jmp start16
        times 0x10000 - ($ - $$) db 0
