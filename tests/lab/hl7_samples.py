"""Golden HL7 v2 messages in several senders' styles (synthetic data only)."""

from __future__ import annotations

from labvault.synthetic import make_nir

NIR_F = make_nir("F", __import__("datetime").date(1980, 5, 17), "59350", 42)


def msh(mtype: str, control: str, version: str = "2.5", charset: str = "",
        facility: str = "LABO") -> str:
    return (f"MSH|^~\\&|ANALYZER|{facility}|LABVAULT|LABO|20260301083000||{mtype}|{control}|P|"
            f"{version}|||||FRA|{charset}")


def pid(nir: str = NIR_F, ext: str = "IPP123") -> str:
    return (f"PID|1||{ext}^^^HOSP^PI~{nir}^^^ASIP-SANTE-NIR&1.2.250.1.213.1.4.8&ISO^NH||"
            "MARTIN^Jeanne^^^^^L||19800517|F|||12 rue des Lilas^^Lille^^59000^FRA||"
            "0612345678")


def oru_numeric(control: str = "M1", nir: str = NIR_F) -> str:
    """Hematology analyzer, v2.5: NM results with SI units, repeated OBX, SPM."""
    return "\r".join([
        msh("ORU^R01^ORU_R01", control), pid(nir),
        "PV1|1|O",
        "ORC|RE|PL1001|FI2001||CM",
        "OBR|1|PL1001|FI2001|58410-2^CBC panel^LN|||20260301080000",
        "SPM|1|PL1001&HIS^FI2001&LAB||BLD^Whole blood^HL70487|||||||||||||20260301080000",
        "OBX|1|NM|718-7^Hemoglobin^LN||13.2|g/dL|12.0-16.0|N|||F|||20260301081500",
        "OBX|2|NM|6690-2^WBC^LN||7.1|10*9/L|4.0-10.0|N|||F",
        "OBX|3|NM|777-3^Platelets^LN||250|10*9/L|150-400|N|||F",
        "OBX|4|NM|2823-3^Potassium^LN||5.6|mmol/L|3.5-5.1|H|||F",
        "NTE|1||Echantillon l\\XC3A9\\g\\E\\rement h\\S\\molys\\F\\",
        "OBX|5|NM|2951-2^Sodium^LN||140|mmol/L|136-145|N|||F",
    ]) + "\r"


def oru_v23_local_codes(control: str = "M2", nir: str = NIR_F) -> str:
    """Older middleware, v2.3: local codes, SN comparator, CE blood group, TX text."""
    return "\r".join([
        msh("ORU^R01", control, "2.3"), pid(nir),
        "OBR|1|PL2002|FI3002|BIOCHIMIE^Biochimie^L|||20260302073000||||||||SER",
        "OBX|1|NM|GLU^Glucose^L||0.95|g/L|0.70-1.10||||F",
        "OBX|2|SN|CRP^CRP^L||<^5|mg/L|<5||||F",
        "OBX|3|CE|ABORH^Groupe^L||A+^Groupe A Rh positif^L||||||F",
        "OBX|4|TX|TSH^TSH^L||2.1|m[IU]/L|0.27-4.2||||F",
        "OBX|5|NM|ZZZ^Mystery^L||12|U/L|||||F",
    ]) + "\r"


def orm(control: str = "O1", nir: str = NIR_F, version: str = "2.5") -> str:
    return "\r".join([
        msh("ORM^O01", control, version), pid(nir),
        "PV1|1|O",
        "ORC|NW|PL3003||||||||||10003456789^DURAND^Paul^^^Dr",
        "OBR|1|PL3003||718-7^Hemoglobin^LN|||20260303090000||||||fatigue",
        "NTE|1||patient sous anticoagulant",
        "OBR|2|PL3003||2823-3^Potassium^LN",
    ]) + "\r"


def orm_cancel(control: str = "C1", placer: str = "PL3003", reason: str = "",
               nir: str = NIR_F) -> str:
    """ORC-1 CA: the placer cancels its order; ORC-16 (reason, CWE) when given."""
    orc = "|".join(["ORC", "CA", placer, *[""] * 13, reason]).rstrip("|")
    return "\r".join([msh("ORM^O01", control), pid(nir), orc,
                      f"OBR|1|{placer}||718-7^Hemoglobin^LN"]) + "\r"


def oml(control: str = "L1", nir: str = NIR_F) -> str:
    return "\r".join([
        msh("OML^O21^OML_O21", control), pid(nir),
        "ORC|NW|PL4004||||||||||",
        "TQ1|1||||||||S",
        "OBR|1|PL4004||14682-9^Creatinine^LN",
        "SPM|1|PL4004&HIS^AC4004&LAB||SER^Serum^HL70487|||||||||||||20260304070000",
    ]) + "\r"


def adt(trigger: str = "A04", control: str = "A1", nir: str = NIR_F,
        first: str = "Jeanne") -> str:
    return "\r".join([
        msh(f"ADT^{trigger}^ADT_A01", control),
        "EVN|" + trigger + "|20260301080000",
        f"PID|1||IPP555^^^HOSP^PI~{nir}^^^ASIP-SANTE-NIR&1.2.250.1.213.1.4.8&ISO^NH||"
        f"LEFEBVRE^{first}^^^^^L~DUBOIS^{first}^^^^^D||19800517|F|||"
        "3 place du Théâtre^^Arras^^62000^FRA||0612345678",
        "PV1|1|O",
    ]) + "\r"
